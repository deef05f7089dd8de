/* GPU inventory: declared GPUs, exclusive holding, counts, model names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sgpu/gpu.h"
#include "sgpu/util.h"

static sg_gpu_inventory_t *empty(void) { return xcalloc(1, sizeof(sg_gpu_inventory_t)); }

static void test_declare(void **state) {
  (void)state;
  sg_gpu_inventory_t *inv = empty();
  sg_error_t *err = NULL;
  assert_int_equal(sg_gpu_declare(inv, "a100:4,h100:2", &err), 0);
  assert_null(err);
  assert_int_equal(inv->n, 6);
  for (size_t i = 0; i < inv->n; i++) {
    assert_int_equal(inv->gpus[i].index, (int)i);
    assert_string_equal(inv->gpus[i].type, i < 4 ? "a100" : "h100");
    assert_string_equal(inv->gpus[i].name, i < 4 ? "a100" : "h100");
    assert_null(inv->gpus[i].uuid);
    assert_null(inv->gpus[i].holder);
    assert_null(inv->gpus[i].endpoint);
    assert_string_equal(inv->gpus[i].source, "declared");
  }
  assert_int_equal(sg_gpu_total_count(inv, "a100"), 4);
  assert_int_equal(sg_gpu_total_count(inv, "h100"), 2);
  assert_int_equal(sg_gpu_total_count(inv, "v100"), 0);
  assert_int_equal(sg_gpu_free_count(inv, "a100"), 4);
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 2);
  /* Declaring again appends, continuing the indexes. */
  assert_int_equal(sg_gpu_declare(inv, "rtx_4090-x:1,a100:1,l4:0", &err), 0);
  assert_int_equal(inv->n, 8);
  assert_int_equal(inv->gpus[6].index, 6);
  assert_string_equal(inv->gpus[6].type, "rtx_4090-x");
  assert_int_equal(sg_gpu_total_count(inv, "a100"), 5);
  assert_int_equal(sg_gpu_total_count(inv, "l4"), 0);
  sg_gpu_inventory_free(inv);
}

static void test_declare_empty(void **state) {
  (void)state;
  sg_gpu_inventory_t *inv = empty();
  assert_int_equal(sg_gpu_declare(inv, "", NULL), 0);
  assert_int_equal(inv->n, 0);
  assert_int_equal(sg_gpu_declare(inv, ",,", NULL), 0);
  assert_int_equal(inv->n, 0);
  assert_int_equal(sg_gpu_declare(inv, "a100:1024", NULL), 0);
  assert_int_equal(inv->n, 1024);
  sg_gpu_inventory_free(inv);
}

static void test_declare_errors(void **state) {
  (void)state;
  const char *bad[] = {"a100",
                       ":4",
                       "a100:",
                       "a100:x",
                       "a100:-1",
                       "a100:1025",
                       "A100:1",
                       "a 100:1",
                       "a100:1x",
                       "a100:1:2",
                       "a.b:1",
                       "a100:4,h100",
                       "a100:99999999999999999999"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    sg_gpu_inventory_t *inv = empty();
    sg_error_t *err = NULL;
    int r = sg_gpu_declare(inv, bad[i], &err);
    if (r >= 0)
      fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(r, -SG_EINVAL);
    assert_non_null(err);
    assert_int_equal(err->status, SG_EINVAL);
    assert_true(sg_str_has_prefix(err->message, "gpus: "));
    sg_error_free(err);
    sg_gpu_inventory_free(inv);
  }
}

static void test_inventory_new_declared(void **state) {
  (void)state;
  sg_error_t *err = NULL;
  sg_gpu_inventory_t *inv = sg_gpu_inventory_new("t4:3", "a100:8", &err);
  assert_non_null(inv);
  assert_null(err);
  assert_int_equal(inv->n, 3);
  assert_int_equal(sg_gpu_total_count(inv, "t4"), 3);
  assert_int_equal(sg_gpu_total_count(inv, "a100"), 0);
  sg_gpu_inventory_free(inv);
  inv = sg_gpu_inventory_new("t4", NULL, &err);
  assert_null(inv);
  assert_non_null(err);
  assert_int_equal(err->status, SG_EINVAL);
  sg_error_free(err);
  /* An empty declaration means no GPUs, not discovery. */
  err = NULL;
  inv = sg_gpu_inventory_new("", "a100:8", &err);
  assert_non_null(inv);
  assert_int_equal(inv->n, 0);
  sg_gpu_inventory_free(inv);
}

static void test_acquire_release(void **state) {
  (void)state;
  sg_gpu_inventory_t *inv = empty();
  assert_int_equal(sg_gpu_declare(inv, "a100:2,h100:3", NULL), 0);
  int out[4] = {-1, -1, -1, -1};
  assert_int_equal(sg_gpu_acquire(inv, "h100", 2, "w-1", "ep-a", out), 0);
  assert_int_equal(out[0], 2);
  assert_int_equal(out[1], 3);
  assert_int_equal(out[2], -1);
  assert_string_equal(inv->gpus[2].holder, "w-1");
  assert_string_equal(inv->gpus[2].endpoint, "ep-a");
  assert_string_equal(inv->gpus[3].holder, "w-1");
  assert_null(inv->gpus[4].holder);
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 1);
  assert_int_equal(sg_gpu_total_count(inv, "h100"), 3);
  assert_int_equal(sg_gpu_free_count(inv, "a100"), 2);

  /* Too few free: nothing taken. */
  int more[2] = {-1, -1};
  assert_int_equal(sg_gpu_acquire(inv, "h100", 2, "w-2", "ep-b", more), -1);
  assert_int_equal(more[0], -1);
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 1);
  assert_null(inv->gpus[4].holder);
  assert_int_equal(sg_gpu_acquire(inv, "v100", 1, "w-2", "ep-b", more), -1);

  /* The last one goes to another holder; none are shared. */
  assert_int_equal(sg_gpu_acquire(inv, "h100", 1, "w-2", "ep-b", more), 0);
  assert_int_equal(more[0], 4);
  assert_string_equal(inv->gpus[4].holder, "w-2");
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 0);
  assert_int_equal(sg_gpu_acquire(inv, "h100", 1, "w-3", "ep-b", more), -1);

  /* Releasing one holder frees only its GPUs. */
  sg_gpu_release(inv, "w-1");
  assert_null(inv->gpus[2].holder);
  assert_null(inv->gpus[2].endpoint);
  assert_null(inv->gpus[3].holder);
  assert_string_equal(inv->gpus[4].holder, "w-2");
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 2);
  /* Releasing again, or an unknown holder, changes nothing. */
  sg_gpu_release(inv, "w-1");
  sg_gpu_release(inv, "nobody");
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 2);

  /* Freed GPUs are handed out again, lowest index first. */
  assert_int_equal(sg_gpu_acquire(inv, "h100", 2, "w-3", "ep-c", out), 0);
  assert_int_equal(out[0], 2);
  assert_int_equal(out[1], 3);
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 0);

  /* Zero GPUs always succeeds. */
  assert_int_equal(sg_gpu_acquire(inv, "h100", 0, "w-4", "ep-d", out), 0);
  assert_int_equal(sg_gpu_free_count(inv, "a100"), 2);

  sg_gpu_release(inv, "w-2");
  sg_gpu_release(inv, "w-3");
  assert_int_equal(sg_gpu_free_count(inv, "h100"), 3);
  sg_gpu_inventory_free(inv);
}

static void test_one_holder_many_types(void **state) {
  (void)state;
  sg_gpu_inventory_t *inv = empty();
  assert_int_equal(sg_gpu_declare(inv, "a100:2,t4:2", NULL), 0);
  int out[2];
  assert_int_equal(sg_gpu_acquire(inv, "a100", 1, "w", "e", out), 0);
  assert_int_equal(out[0], 0);
  assert_int_equal(sg_gpu_acquire(inv, "t4", 1, "w", "e", out), 0);
  assert_int_equal(out[0], 2);
  sg_gpu_release(inv, "w");
  assert_int_equal(sg_gpu_free_count(inv, "a100"), 2);
  assert_int_equal(sg_gpu_free_count(inv, "t4"), 2);
  sg_gpu_inventory_free(inv);
}

static void test_type_from_name(void **state) {
  (void)state;
  const struct {
    const char *name, *type;
  } cases[] = {
      {"NVIDIA A100-SXM4-80GB", "a100"},
      {"NVIDIA A100 80GB PCIe", "a100"},
      {"NVIDIA H100 80GB HBM3", "h100"},
      {"Tesla V100-PCIE-16GB", "v100"},
      {"Tesla T4", "t4"},
      {"NVIDIA L40S", "l40s"},
      {"NVIDIA A10G", "a10g"},
      {"NVIDIA GeForce RTX 4090", "4090"},
      {"NVIDIA RTX A6000", "a6000"},
      {"  NVIDIA  L4 ", "l4"},
      {"Graphics Device", "graphics-device"},
      {"", "gpu"},
  };
  for (size_t i = 0; i < SG_ARRAY_SIZE(cases); i++) {
    char *t = sg_gpu_type_from_name(cases[i].name);
    assert_non_null(t);
    if (strcmp(t, cases[i].type))
      fail_msg("\"%s\" -> \"%s\", want \"%s\"", cases[i].name, t, cases[i].type);
    free(t);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_declare),         cmocka_unit_test(test_declare_empty),
      cmocka_unit_test(test_declare_errors),  cmocka_unit_test(test_inventory_new_declared),
      cmocka_unit_test(test_acquire_release), cmocka_unit_test(test_one_holder_many_types),
      cmocka_unit_test(test_type_from_name),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
