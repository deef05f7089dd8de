/* sgpu volumes: create, list, remove volumes and upload tarballs into them. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char sg_volumes_help[] = "Usage: sgpu volumes list\n"
                               "       sgpu volumes create NAME [--size SIZE]\n"
                               "       sgpu volumes rm NAME\n"
                               "       sgpu volumes upload NAME FILE.tar[.gz]\n"
                               "\n"
                               "Manages volumes: storage that outlives workers, mounted by specs (\"volumes\").\n"
                               "upload sends a tarball (plain or compressed) that sgpud unpacks into the\n"
                               "volume, over what is there; the file is sent as it is read, not copied.\n"
                               "\n"
                               "Options:\n"
                               "  --size SIZE      create: the volume's size limit in bytes, or with a suffix\n"
                               "                   K, M, G, T (powers of 1024); default: no limit\n";

#define CMD "volumes"
#define MAX_ANSWER ((size_t)1 << 20)

enum { OPT_SIZE = 1 };

static long long size_bytes; /* 0: not given */

static void fmt_bytes(const json_t *v, char *buf, size_t len) {
  if (!json_is_number(v)) {
    snprintf(buf, len, "-");
    return;
  }
  double b = json_number_value(v);
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  size_t u = 0;
  while (b >= 1024 && u + 1 < SG_ARRAY_SIZE(units))
    b /= 1024, u++;
  snprintf(buf, len, u ? "%.1f%s" : "%.0f%s", b, units[u]);
}

static int volumes_list(sg_client_t *c, int nargs, char **args) {
  (void)nargs, (void)args;
  cleanup_response sg_client_response_t r = {0};
  if (sg_cli_call(c, "GET", "/v1/volumes", NULL, &r) < 0)
    return SG_EXIT_FAIL;
  if (sg_cli_opts.json)
    return sg_print_raw(&r);
  json_t *list = json_object_get(r.json, "volumes");
  if (!json_is_array(list)) {
    sg_cli_errorf("unexpected answer from the server: no volumes list");
    return SG_EXIT_FAIL;
  }
  static const char *const headers[] = {"NAME", "SIZE", "USED", "MOUNTED BY", "CREATED"};
  cleanup_table struct sg_table *t = sg_table_new(SG_ARRAY_SIZE(headers), headers);
  size_t i;
  json_t *v;
  json_array_foreach(list, i, v) {
    char name[128], size[32], used[32], mounted[1024], created[64];
    sg_cell(json_object_get(v, "name"), name, sizeof name);
    fmt_bytes(json_object_get(v, "size_bytes"), size, sizeof size);
    fmt_bytes(json_object_get(v, "used_bytes"), used, sizeof used);
    sg_cell(json_object_get(v, "mounted_by"), mounted, sizeof mounted);
    sg_cell(json_object_get(v, "created"), created, sizeof created);
    const char *cells[] = {name, size, used, mounted, created};
    sg_table_add(t, cells);
  }
  sg_table_print(t, stdout);
  return SG_EXIT_OK;
}

static int volumes_create(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_json json_t *body = json_pack("{s:s}", "name", args[0]);
  if (size_bytes)
    json_object_set_new(body, "size_bytes", json_integer(size_bytes));
  return sg_cli_send(c, "POST", "/v1/volumes", body, "volume %s created\n", args[0]);
}

static int volumes_rm(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_free char *path = sg_cli_path("volumes", args[0], NULL);
  return sg_cli_send(c, "DELETE", path, NULL, "volume %s removed\n", args[0]);
}

static int collect(const char *data, size_t len, void *ud) {
  sg_strbuf_t *b = ud;
  if (b->len + len > MAX_ANSWER)
    return -1;
  sg_strbuf_append_n(b, data, len);
  return 0;
}

/* The tarball is mapped, not read: curl sends it from the mapping. */
static int volumes_upload(sg_client_t *c, int nargs, char **args) {
  (void)nargs;
  cleanup_close int fd = open(args[1], O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) {
    sg_cli_errorf("%s: %s", args[1], strerror(errno));
    return SG_EXIT_USAGE;
  }
  if (!S_ISREG(st.st_mode)) {
    sg_cli_errorf("%s: not a regular file", args[1]);
    return SG_EXIT_USAGE;
  }
  size_t len = (size_t)st.st_size;
  void *map = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
  if (len && map == MAP_FAILED) {
    sg_cli_errorf("%s: %s", args[1], strerror(errno));
    return SG_EXIT_USAGE;
  }
  cleanup_free char *path = sg_cli_path("volumes", args[0], "files");
  cleanup_slist struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/octet-stream");
  headers = curl_slist_append(headers, "Expect:"); /* send at once, no 100-continue round trip */
  cleanup_strbuf sg_strbuf_t answer = SG_STRBUF_INIT;
  sg_client_stream_t s = {
      .method = "POST",
      .path = path,
      .headers = headers,
      .body = len ? map : "",
      .body_len = len,
      .on_data = collect,
      .ud = &answer,
  };
  int r = sg_cli_stream(c, &s);
  if (len)
    munmap(map, len);
  if (r < 0)
    return SG_EXIT_FAIL;
  cleanup_json json_t *j = answer.len ? json_loadb(answer.s, answer.len, 0, NULL) : NULL;
  if (sg_cli_opts.json || !j) {
    if (answer.len)
      fwrite(answer.s, 1, answer.len, stdout);
    if (!answer.len || answer.s[answer.len - 1] != '\n')
      putchar('\n');
    return SG_EXIT_OK;
  }
  char unpacked[32], used[32];
  fmt_bytes(json_object_get(j, "unpacked_bytes"), unpacked, sizeof unpacked);
  fmt_bytes(json_object_get(j, "used_bytes"), used, sizeof used);
  printf("%s unpacked into volume %s (%s used)\n", unpacked, args[0], used);
  return SG_EXIT_OK;
}

static const struct sg_cli_action actions[] = {
    {"list", 0, 0, volumes_list, "no arguments"},
    {"create", 1, 1, volumes_create, "one volume NAME"},
    {"rm", 1, 1, volumes_rm, "one volume NAME"},
    {"upload", 2, 2, volumes_upload, "a volume NAME and a tarball FILE"},
};

/* "10G", "512M", "4096": bytes; -1 when it is not a size. */
static long long parse_size(const char *s) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || errno || v < 1)
    return -1;
  int shift = 0;
  switch (*end) {
  case '\0':
    break;
  case 'K':
    shift = 10;
    break;
  case 'M':
    shift = 20;
    break;
  case 'G':
    shift = 30;
    break;
  case 'T':
    shift = 40;
    break;
  default:
    return -1;
  }
  if (*end && end[1])
    return -1;
  if (v > (1LL << 50) >> shift)
    return -1;
  return v << shift;
}

int sg_cmd_volumes(int argc, char **argv) {
  static const struct option options[] = {
      SG_CLI_GLOBAL_OPTIONS, {"size", required_argument, NULL, OPT_SIZE}, {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, SG_CLI_SHORT "", options, NULL)) != -1) {
    if (sg_cli_global_option(ch, optarg))
      continue;
    switch (ch) {
    case 'h':
      sg_cli_print_help(CMD, stdout);
      return SG_EXIT_OK;
    case OPT_SIZE:
      size_bytes = parse_size(optarg);
      if (size_bytes < 0)
        return sg_cli_usage_error(CMD, "volumes: --size must be bytes (at most 2^50), or a number with K, M, G or T");
      continue;
    default:
      return sg_cli_getopt_error(CMD, ch, argv);
    }
  }
  int nargs = argc - optind;
  char **args = argv + optind;
  if (size_bytes && (nargs < 1 || strcmp(args[0], "create")))
    return sg_cli_usage_error(CMD, "volumes: --size is for create");
  return sg_cli_run_action(CMD, actions, SG_ARRAY_SIZE(actions), nargs, args);
}
