#include "sgpu/error.h"

#include <stdio.h>
#include <stdlib.h>

#include "sgpu/util.h"

__attribute__((format(printf, 3, 0))) static sg_error_t *new_error(int status, const char *field, const char *fmt,
                                                                   va_list ap) {
  sg_error_t *e = xcalloc(1, sizeof(*e));
  e->status = status;
  e->field = field ? xstrdup(field) : NULL;
  if (vasprintf(&e->message, fmt, ap) < 0)
    abort();
  return e;
}

int sg_make_error(sg_error_t **err, int status, const char *fmt, ...) {
  if (err && !*err) {
    va_list ap;
    va_start(ap, fmt);
    *err = new_error(status, NULL, fmt, ap);
    va_end(ap);
  }
  return -status;
}

int sg_make_field_error(sg_error_t **err, const char *field, const char *fmt, ...) {
  if (err && !*err) {
    va_list ap;
    va_start(ap, fmt);
    sg_error_t *e = new_error(SG_EINVAL, field, fmt, ap);
    va_end(ap);
    /* The message always starts with the field so it reads on its own. */
    char *m = xasprintf("%s: %s", field, e->message);
    free(e->message);
    e->message = m;
    *err = e;
  }
  return -SG_EINVAL;
}

void sg_error_free(sg_error_t *err) {
  if (!err)
    return;
  free(err->field);
  free(err->message);
  free(err);
}
