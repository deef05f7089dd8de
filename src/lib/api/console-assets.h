/* The web console's files, embedded at build time (scripts/embed-web.py). */
#ifndef SGPU_CONSOLE_ASSETS_H
#define SGPU_CONSOLE_ASSETS_H

#include <stddef.h>

typedef struct sg_web_asset {
  const char *path; /* as served: "/", "/console/app.js" */
  const char *file; /* name in web/ */
  const char *type; /* Content-Type */
  const unsigned char *data;
  size_t len;
} sg_web_asset_t;

extern const sg_web_asset_t sg_web_assets[];
extern const size_t sg_web_n_assets;

#endif
