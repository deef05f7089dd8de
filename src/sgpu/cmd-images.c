/* sgpu images: the image cache (list, preheat, remove) and sgpu
 * registry-auth: stored registry credentials. */
#include "cli.h"

#include <string.h>

const char sg_images_help[] = "Usage: sgpu images list\n"
                              "       sgpu images pull REF [--registry-auth NAME]\n"
                              "       sgpu images rm REF\n"
                              "\n"
                              "list shows the cached images and the pulls under way or failed; pull starts\n"
                              "pulling REF into the cache (or checks that a cached tag is current); rm removes\n"
                              "a cached image and the layers no other image uses.\n"
                              "\n"
                              "Options:\n"
                              "  --registry-auth NAME  pull with these stored credentials\n";

const char sg_registry_auth_help[] = "Usage: sgpu registry-auth list\n"
                                     "       sgpu registry-auth set NAME --registry HOST[:PORT] --username USER\n"
                                     "                              [--password PASSWORD|@FILE]\n"
                                     "       sgpu registry-auth rm NAME\n"
                                     "\n"
                                     "Stores (creates or replaces), lists and removes the credentials endpoints\n"
                                     "name in registry_auth. The password is read from --password, @FILE, or\n"
                                     "standard input (one final newline removed); it is never shown.\n"
                                     "\n"
                                     "Options:\n"
                                     "  --registry HOST  the registry the credentials are for\n"
                                     "  --username USER  the user name\n"
                                     "  --password P     the password, @FILE to read it from a file\n";

#define MAX_SECRET_BYTES ((size_t)65536)

enum { OPT_AUTH = 1, OPT_REGISTRY, OPT_USERNAME, OPT_PASSWORD };

static struct { const char *auth, *registry, *username, *password; } o;

static void fmt_bytes(const json_t *v, char *buf, size_t len) {
  if (!json_is_number(v)) {
    snprintf(buf, len, "-");
    return;
  }
  double b = json_number_value(v);
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  size_t u = 0;
  while (b >= 1024 && u + 1 < SG_ARRAY_SIZE(units))
    b /= 1024, u++;
  snprintf(buf, len, u ? "%.1f%s" : "%.0f%s", b, units[u]);
}

static int images_list(sg_client_t *c, int nargs, char **args) {
  (void)nargs, (void)args;
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", "/v1/images", NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  json_t *images = json_object_get(r.json, "images"), *pulls = json_object_get(r.json, "pulls");
  if (!json_is_array(images)) {
    sg_cli_errorf("unexpected answer from the server: no images list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"IMAGE", "STATE", "SIZE", "DIGEST", "LAST USED", "IN USE"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *im;
  json_array_foreach(images, i, im) {
    char image[512], size[32], digest[96], used[64], in_use[16];
    sg_cell(json_object_get(im, "image"), image, sizeof image);
    fmt_bytes(json_object_get(im, "size_bytes"), size, sizeof size);
    sg_cell(json_object_get(im, "digest"), digest, sizeof digest);
    if (strlen(digest) > 19) /* sha256: and 12 hex digits, as docker shows them */
      digest[19] = '\0';
    sg_cell(json_object_get(im, "last_used_at"), used, sizeof used);
    sg_cell(json_object_get(im, "in_use"), in_use, sizeof in_use);
    const char *cells[] = {image, "cached", size, digest, used, in_use};
    sg_table_add(t, cells);
  }
  json_array_foreach(pulls, i, im) {
    char image[512], state[32];
    sg_cell(json_object_get(im, "image"), image, sizeof image);
    sg_cell(json_object_get(im, "state"), state, sizeof state);
    const char *cells[] = {image, state, "-", "-", "-", "-"};
    sg_table_add(t, cells);
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int images_pull(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_json json_t *body = json_pack("{s:s}", "image", args[0]);
  if (o.auth)
    json_object_set_new(body, "registry_auth", json_string(o.auth));
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "POST", "/v1/images", body, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  char state[32];
  printf("%s %s\n", args[0], sg_cell(json_object_get(r.json, "state"), state, sizeof state));
  return SG_EXIT_OK;
}

static int images_rm(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_free char *path = sg_cli_path("images", args[0], NULL);
  return sg_cli_send(c, "DELETE", path, NULL, "image %s removed\n", args[0]);
}

static const struct sg_cli_action image_actions[] = {
    {"list", 0, 0, images_list, "no arguments"},
    {"pull", 1, 1, images_pull, "one image REF"},
    {"rm", 1, 1, images_rm, "one image REF"},
};

/* Parses the options of images and registry-auth; returns -1 to go on, else
 * an exit status. */
static int parse(const char *cmd, int argc, char **argv) {
  static const struct option options[] = {SG_CLI_GLOBAL_OPTIONS,
                                          {"registry-auth", required_argument, NULL, OPT_AUTH},
                                          {"registry", required_argument, NULL, OPT_REGISTRY},
                                          {"username", required_argument, NULL, OPT_USERNAME},
                                          {"password", required_argument, NULL, OPT_PASSWORD},
                                          {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(cmd, stdout);
      return SG_EXIT_OK;
    case OPT_AUTH:
      o.auth = optarg;
      continue;
    case OPT_REGISTRY:
      o.registry = optarg;
      continue;
    case OPT_USERNAME:
      o.username = optarg;
      continue;
    case OPT_PASSWORD:
      o.password = optarg;
      continue;
    default:
      return sg_cli_getopt_error(cmd, ch, argv);
    }
  }
  return -1;
}

int sg_cmd_images(int argc, char **argv) {
  int r = parse("images", argc, argv);
  if (r >= 0)
    return r;
  int nargs = argc - optind;
  char **args = argv + optind;
  if (o.registry || o.username || o.password)
    return sg_cli_usage_error("images", "images: --registry, --username and --password are for registry-auth");
  if (o.auth && (nargs < 1 || strcmp(args[0], "pull")))
    return sg_cli_usage_error("images", "images: --registry-auth is for pull");
  return sg_cli_run_action("images", image_actions, SG_ARRAY_SIZE(image_actions), nargs, args);
}

/* ---- registry-auth ---- */

static int auth_list(sg_client_t *c, int nargs, char **args) {
  (void)nargs, (void)args;
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", "/v1/registry-auths", NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  json_t *list = json_object_get(r.json, "registry_auths");
  if (!json_is_array(list)) {
    sg_cli_errorf("unexpected answer from the server: no registry_auths list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"NAME", "REGISTRY", "USERNAME", "UPDATED"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *a;
  json_array_foreach(list, i, a) {
    char name[128], registry[256], user[256], updated[64];
    sg_cell(json_object_get(a, "name"), name, sizeof name);
    sg_cell(json_object_get(a, "registry"), registry, sizeof registry);
    sg_cell(json_object_get(a, "username"), user, sizeof user);
    sg_cell(json_object_get(a, "updated_at"), updated, sizeof updated);
    const char *cells[] = {name, registry, user, updated};
    sg_table_add(t, cells);
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int auth_set(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  size_t len;
  cleanup_free char *password = sg_cli_secret_value(o.password, MAX_SECRET_BYTES, &len);
  if (!password)
    return SG_EXIT_USAGE;
  cleanup_json json_t *body = json_pack("{s:s, s:s, s:s, s:s%}", "name", args[0], "registry", o.registry, "username",
                                        o.username, "password", password, len);
  explicit_bzero(password, len);
  cleanup_free char *path = sg_cli_path("registry-auths", args[0], NULL);
  return sg_cli_send(c, "PUT", path, body, "registry auth %s stored\n", args[0]);
}

static int auth_rm(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_free char *path = sg_cli_path("registry-auths", args[0], NULL);
  return sg_cli_send(c, "DELETE", path, NULL, "registry auth %s removed\n", args[0]);
}

static const struct sg_cli_action auth_actions[] = {
    {"list", 0, 0, auth_list, "no arguments"},
    {"set", 1, 1, auth_set, "one NAME with --registry and --username"},
    {"rm", 1, 1, auth_rm, "one NAME"},
};

int sg_cmd_registry_auth(int argc, char **argv) {
  int r = parse("registry-auth", argc, argv);
  if (r >= 0)
    return r;
  int nargs = argc - optind;
  char **args = argv + optind;
  bool set = nargs >= 1 && !strcmp(args[0], "set");
  if (o.auth)
    return sg_cli_usage_error("registry-auth", "registry-auth: --registry-auth is for images pull");
  if (!set && (o.registry || o.username || o.password))
    return sg_cli_usage_error("registry-auth", "registry-auth: --registry, --username and --password are for set");
  if (set && (!o.registry || !o.username))
    return sg_cli_usage_error("registry-auth", "registry-auth set: needs --registry and --username");
  return sg_cli_run_action("registry-auth", auth_actions, SG_ARRAY_SIZE(auth_actions), nargs, args);
}
