/* Where sgpu keeps its state by default. */
#include "sgpu/util.h"

char *sg_default_data_dir(void) {
  const char *env = getenv("SGPU_DATA_DIR");
  if (env && *env)
    return xstrdup(env);
  const char *home = getenv("HOME");
  return xasprintf("%s/.sgpu", home && *home ? home : ".");
}
