/* CDI: nvidia.com/gpu specs loaded from a directory, edits chosen by GPU
 * index, other kinds and unparsable files ignored, edits applied. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "sgpu/cdi.h"
#include "sgpu/util.h"

static void put(const char *dir, const char *name, const char *text) {
  cleanup_free char *path = xasprintf("%s/%s", dir, name);
  FILE *f = fopen(path, "we");
  assert_non_null(f);
  assert_int_equal(fputs(text, f) >= 0, 1);
  assert_int_equal(fclose(f), 0);
}

static void rm_dir(const char *dir, const char *const *names) {
  for (; *names; names++) {
    cleanup_free char *path = xasprintf("%s/%s", dir, *names);
    unlink(path);
  }
  rmdir(dir);
}

static const char nvidia_json[] = "{\"cdiVersion\": \"0.5.0\", \"kind\": \"nvidia.com/gpu\", \"devices\": ["
                                  " {\"name\": \"0\", \"containerEdits\": {\"deviceNodes\": [{\"path\": "
                                  "\"/dev/nvidia0\", \"hostPath\": \"/dev/null\"}]}},"
                                  " {\"name\": \"1\", \"containerEdits\": {\"deviceNodes\": [{\"path\": "
                                  "\"/dev/nvidia1\", \"hostPath\": \"/dev/null\"}]}}],"
                                  " \"containerEdits\": {\"env\": [\"NVIDIA_VISIBLE_DEVICES=void\", \"CDI_TEST=1\"],"
                                  " \"deviceNodes\": [{\"path\": \"/dev/nvidiactl\", \"hostPath\": \"/dev/zero\"}]}}";

/* The path of edits[i]'s first device node. */
static const char *node_path(json_t *edits, size_t i) {
  return json_string_value(
      json_object_get(json_array_get(json_object_get(json_array_get(edits, i), "deviceNodes"), 0), "path"));
}

static void test_edits_by_index(void **state) {
  (void)state;
  char dir[] = "/tmp/sgpu-cdi-XXXXXX";
  assert_non_null(mkdtemp(dir));
  put(dir, "nvidia.json", nvidia_json);
  put(dir, "other.json", "{\"cdiVersion\": \"0.5.0\", \"kind\": \"vendor.com/fpga\", \"devices\": []}");
  put(dir, "nodevices.json", "{\"kind\": \"nvidia.com/gpu\", \"devices\": {}}");
  put(dir, "broken.json", "{\"kind\": \"nvidia.com/gpu\", ");
  put(dir, "broken.yaml", "kind: [nvidia.com/gpu\n");
  put(dir, "notes.txt", nvidia_json);
  sg_cdi_t *cdi = sg_cdi_load(dir);
  assert_int_equal(sg_cdi_count(cdi), 1);

  json_t *e0 = sg_cdi_edits(cdi, (int[]){0}, 1);
  assert_int_equal(json_array_size(e0), 2); /* the device's, then the spec's */
  assert_string_equal(node_path(e0, 0), "/dev/nvidia0");
  assert_string_equal(node_path(e0, 1), "/dev/nvidiactl");
  json_t *e1 = sg_cdi_edits(cdi, (int[]){1}, 1);
  assert_int_equal(json_array_size(e1), 2);
  assert_string_equal(node_path(e1, 0), "/dev/nvidia1");
  assert_string_equal(node_path(e1, 1), "/dev/nvidiactl");
  json_t *both = sg_cdi_edits(cdi, (int[]){1, 0}, 2);
  assert_int_equal(json_array_size(both), 3); /* global edits once */
  assert_string_equal(node_path(both, 0), "/dev/nvidia1");
  assert_string_equal(node_path(both, 1), "/dev/nvidia0");
  json_t *none = sg_cdi_edits(cdi, (int[]){2}, 1);
  assert_int_equal(json_array_size(none), 0);

  /* Applied: env set, device nodes from the host's, the spec's global ones too. */
  json_t *c = json_pack("{s:{s:[s, s]}, s:{s:[], s:{s:[]}}, s:[]}", "process", "env", "PATH=/bin", "CDI_TEST=0",
                        "linux", "devices", "resources", "devices", "mounts");
  sg_error_t *err = NULL;
  assert_int_equal(sg_cdi_apply(c, e0, false, &err), 0);
  assert_null(err);
  json_t *env = json_object_get(json_object_get(c, "process"), "env");
  assert_int_equal(json_array_size(env), 3);
  assert_string_equal(json_string_value(json_array_get(env, 1)), "CDI_TEST=1");
  assert_string_equal(json_string_value(json_array_get(env, 2)), "NVIDIA_VISIBLE_DEVICES=void");
  json_t *devs = json_object_get(json_object_get(c, "linux"), "devices");
  assert_int_equal(json_array_size(devs), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(devs, 0), "path")), "/dev/nvidia0");
  assert_string_equal(json_string_value(json_object_get(json_array_get(devs, 0), "type")), "c");
  assert_string_equal(json_string_value(json_object_get(json_array_get(devs, 1), "path")), "/dev/nvidiactl");
  json_decref(c);

  json_decref(e0);
  json_decref(e1);
  json_decref(both);
  json_decref(none);
  sg_cdi_free(cdi);
  rm_dir(dir, (const char *const[]){"nvidia.json", "other.json", "nodevices.json", "broken.json", "broken.yaml",
                                    "notes.txt", NULL});
}

static void test_yaml_and_missing(void **state) {
  (void)state;
  char dir[] = "/tmp/sgpu-cdi-XXXXXX";
  assert_non_null(mkdtemp(dir));
  put(dir, "nvidia.yaml",
      "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits:\n"
      "    deviceNodes:\n    - path: /dev/nvidia0\n");
  sg_cdi_t *cdi = sg_cdi_load(dir);
  assert_int_equal(sg_cdi_count(cdi), 1);
  json_t *e = sg_cdi_edits(cdi, (int[]){0}, 1);
  assert_int_equal(json_array_size(e), 1);
  assert_string_equal(node_path(e, 0), "/dev/nvidia0");
  json_decref(e);
  sg_cdi_free(cdi);
  rm_dir(dir, (const char *const[]){"nvidia.yaml", NULL});

  /* A missing directory gives no specs, and no edits. */
  cdi = sg_cdi_load(dir);
  assert_int_equal(sg_cdi_count(cdi), 0);
  e = sg_cdi_edits(cdi, (int[]){0}, 1);
  assert_int_equal(json_array_size(e), 0);
  json_decref(e);
  sg_cdi_free(cdi);
}

static void test_apply_bad_node(void **state) {
  (void)state;
  json_t *c = json_pack("{s:{s:[]}, s:{s:[], s:{s:[]}}, s:[]}", "process", "env", "linux", "devices", "resources",
                        "devices", "mounts");
  json_t *edits = json_pack("[{s:[{s:s, s:s}]}]", "deviceNodes", "path", "/dev/x", "hostPath", "/");
  sg_error_t *err = NULL;
  assert_int_equal(sg_cdi_apply(c, edits, false, &err) < 0, 1);
  assert_non_null(err);
  assert_string_equal(err->message, "CDI device / is not a device node");
  sg_error_free(err);
  json_decref(edits);
  json_decref(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_edits_by_index),
      cmocka_unit_test(test_yaml_and_missing),
      cmocka_unit_test(test_apply_bad_node),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
