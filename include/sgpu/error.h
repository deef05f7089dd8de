/* Errors: one convention for every fallible function in libsgpu.
 *
 * A function that can fail returns an int (0, or a negative value) or a pointer
 * (NULL) and fills *err with a status (an errno value or an sg_status) and a
 * message. sg_make_error() returns the negative status so a failure site is one
 * line. The caller owns *err and releases it with sg_error_free(). */
#ifndef SGPU_ERROR_H
#define SGPU_ERROR_H

#include <stdarg.h>

typedef struct sg_error {
  int status;  /* positive errno value or SG_E* below */
  char *field; /* for validation errors: the offending field, else NULL */
  char *message;
} sg_error_t;

enum {
  SG_EINVAL = 1000, /* a field is invalid (field names it) */
  SG_EJSON,         /* the body is not valid JSON */
  SG_ENOTFOUND,
  SG_EEXIST,
  SG_ETOOLARGE,
  SG_EUNAVAIL, /* feature not available in this build or on this host */
  SG_ESTORE,   /* the store failed */
};

int sg_make_error(sg_error_t **err, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int sg_make_field_error(sg_error_t **err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sg_error_free(sg_error_t *err);

static inline void sg_error_freep(sg_error_t **e) {
  if (*e)
    sg_error_free(*e);
}
#define cleanup_error __attribute__((cleanup(sg_error_freep)))

#endif
