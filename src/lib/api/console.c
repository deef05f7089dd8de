/* The web console: static files served at / without a key (they hold no
 * data; every API call the console makes carries the key the user typed).
 * The files are embedded in the binary; with web_dir set they are read from
 * that directory on each request instead, for work on the console. */
#include <errno.h>

#include "api-internal.h"
#include "api/console-assets.h"
#include "sgpu/util.h"

#define MAX_FILE (8u << 20)

static void add_headers(sg_http_req_t *req) {
  sg_http_add_header(req, "Cache-Control", "no-cache");
  sg_http_add_header(req, "X-Content-Type-Options", "nosniff");
  sg_http_add_header(req, "X-Frame-Options", "DENY");
  sg_http_add_header(req, "Referrer-Policy", "no-referrer");
  sg_http_add_header(req, "Content-Security-Policy",
                     "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                     "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
}

bool sg_console_handle(sg_daemon_t *d, sg_http_req_t *req) {
  const char *path = sg_http_path(req);
  if (!strcmp(path, "/index.html"))
    path = "/";
  if (strcmp(path, "/") && !sg_str_has_prefix(path, "/console/"))
    return false;
  const sg_web_asset_t *a = NULL;
  for (size_t i = 0; i < sg_web_n_assets && !a; i++)
    if (!strcmp(sg_web_assets[i].path, path))
      a = &sg_web_assets[i];
  if (!a) {
    sg_http_send_error(req, 404, "not_found", "no such console file", NULL);
    return true;
  }
  if (!sg_http_method_is(req, "GET") && !sg_http_method_is(req, "HEAD")) {
    sg_http_method_not_allowed(req, "GET, HEAD");
    return true;
  }
  add_headers(req);
  if (d->cfg.web_dir && *d->cfg.web_dir) {
    cleanup_free char *file = xasprintf("%s/%s", d->cfg.web_dir, a->file);
    size_t len = 0;
    cleanup_free char *data = sg_read_file(file, MAX_FILE, &len);
    if (!data) {
      cleanup_free char *msg = xasprintf("cannot read %s: %s", file, strerror(errno));
      sg_http_send_error(req, 500, "internal", msg, NULL);
      return true;
    }
    sg_http_reply(req, 200, a->type, data, len);
    return true;
  }
  sg_http_reply(req, 200, a->type, a->data, a->len);
  return true;
}
