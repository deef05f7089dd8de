/* The runtime registry: lookup by name, the names list, unknown names, the
 * defaults, and that each runtime's ops and capability flags agree. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sgpu/runtime.h"

static void test_find(void **state) {
  (void)state;
  assert_ptr_equal(sg_runtime_find("process"), &sg_process_runtime);
  assert_ptr_equal(sg_runtime_find("oci"), &sg_oci_runtime);
  assert_ptr_equal(sg_runtime_find("slurm"), &sg_slurm_runtime);
}

static void test_unknown(void **state) {
  (void)state;
  assert_null(sg_runtime_find("docker"));
  assert_null(sg_runtime_find(""));
  assert_null(sg_runtime_find(NULL));
  assert_null(sg_runtime_find("Process")); /* names are case-sensitive */
  assert_null(sg_runtime_find("process "));
  assert_null(sg_runtime_find("proc"));
}

static void test_names(void **state) {
  (void)state;
  const char *const *names = sg_runtime_names();
  assert_non_null(names);
  assert_string_equal(names[0], "process");
  assert_string_equal(names[1], "oci");
  assert_string_equal(names[2], "slurm");
  assert_null(names[3]);
  /* Every name finds the runtime of that name, once. */
  for (size_t i = 0; names[i]; i++) {
    const sg_runtime_ops_t *rt = sg_runtime_find(names[i]);
    assert_non_null(rt);
    assert_string_equal(rt->name, names[i]);
    for (size_t j = 0; j < i; j++)
      assert_string_not_equal(names[j], names[i]);
  }
  assert_ptr_equal(sg_runtime_names(), names);
  char *text = sg_runtime_names_text();
  assert_string_equal(text, "\"process\", \"oci\" or \"slurm\"");
  free(text);
}

static void test_defaults(void **state) {
  (void)state;
  assert_ptr_equal(sg_runtime_default(false), &sg_process_runtime);
  assert_ptr_equal(sg_runtime_default(true), &sg_oci_runtime);
  assert_ptr_equal(sg_runtime_local(), &sg_process_runtime);
}

/* What the daemon relies on, for every runtime in the registry. */
static void test_ops_agree(void **state) {
  (void)state;
  for (const char *const *n = sg_runtime_names(); *n; n++) {
    const sg_runtime_ops_t *rt = sg_runtime_find(*n);
    assert_non_null(rt->start);
    assert_non_null(rt->signal);
    assert_non_null(rt->pid);
    assert_non_null(rt->release);
    /* adopt offers leftovers and adopt_instance takes one: both or neither. */
    assert_int_equal(rt->adopt != NULL, rt->adopt_instance != NULL);
    /* A remote runtime reports where its worker runs, and schedules its GPUs. */
    assert_int_equal(rt->remote, rt->placement != NULL);
    assert_int_equal(rt->remote, (rt->caps & SG_RUNTIME_OWN_GPUS) != 0);
    /* A runtime that needs an image runs images; one with the host's
     * environment runs none of its own. */
    if (rt->caps & SG_RUNTIME_NEEDS_IMAGE)
      assert_true(rt->caps & SG_RUNTIME_IMAGES);
    if (rt->caps & SG_RUNTIME_HOST_ENV)
      assert_false(rt->caps & SG_RUNTIME_NEEDS_IMAGE);
  }
  assert_int_equal(sg_process_runtime.caps, SG_RUNTIME_HOST_ENV);
  assert_int_equal(sg_oci_runtime.caps, SG_RUNTIME_IMAGES | SG_RUNTIME_NEEDS_IMAGE);
  assert_int_equal(sg_slurm_runtime.caps, SG_RUNTIME_OWN_GPUS | SG_RUNTIME_IMAGES);
  assert_non_null(sg_process_runtime.reconcile);
  assert_null(sg_oci_runtime.reconcile);
  assert_non_null(sg_slurm_runtime.adopt);
  assert_non_null(sg_slurm_runtime.nodes);
  /* Not set up in this process: the runtimes say why they cannot start. */
  assert_non_null(sg_slurm_runtime.unavailable());
}

/* sg_runtime_all() is the registry the daemon inits and shuts down: every
 * runtime once, in the order of the names; a runtime holding images lets
 * go of them in stop (before the image store is freed). */
static void test_all_in_order(void **state) {
  (void)state;
  const sg_runtime_ops_t *const *all = sg_runtime_all();
  const char *const *names = sg_runtime_names();
  size_t n = 0;
  for (; all[n]; n++) {
    assert_non_null(names[n]);
    assert_string_equal(all[n]->name, names[n]);
    assert_ptr_equal(sg_runtime_find(names[n]), all[n]);
    if (all[n]->caps & SG_RUNTIME_IMAGES) {
      assert_non_null(all[n]->init);
      assert_non_null(all[n]->stop);
    }
  }
  assert_null(names[n]);
  assert_true(n >= 3);
  /* Stop and shutdown are safe on a runtime never set up. */
  for (size_t i = 0; i < n; i++)
    if (all[i]->stop)
      all[i]->stop();
  for (size_t i = n; i-- > 0;)
    if (all[i]->shutdown)
      all[i]->shutdown();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_find),     cmocka_unit_test(test_unknown),   cmocka_unit_test(test_names),
      cmocka_unit_test(test_defaults), cmocka_unit_test(test_ops_agree), cmocka_unit_test(test_all_in_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
