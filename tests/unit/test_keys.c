/* API keys' pure pieces (api/keys.c): the token bucket of the rate limit and
 * the scope and endpoint check the router's auth hook applies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth/keys.h"

static void test_bucket_starts_full_and_refills_at_its_rate(void **state) {
  (void)state;
  sg_bucket_t b;
  sg_bucket_init(&b, 2.0, 3.0, 1000); /* 2 a second, 3 at once */
  assert_int_equal(sg_bucket_take(&b, 1000), 0);
  assert_int_equal(sg_bucket_take(&b, 1000), 0);
  assert_int_equal(sg_bucket_take(&b, 1000), 0);
  /* empty: one token comes in 0.5 s, rounded up to 1 s */
  assert_int_equal(sg_bucket_take(&b, 1000), 1);
  assert_int_equal(sg_bucket_take(&b, 1499), 1);
  assert_int_equal(sg_bucket_take(&b, 1500), 0);
  assert_int_equal(sg_bucket_take(&b, 1500), 1);
  /* a long pause refills to the burst, not beyond */
  assert_int_equal(sg_bucket_take(&b, 100000), 0);
  assert_int_equal(sg_bucket_take(&b, 100000), 0);
  assert_int_equal(sg_bucket_take(&b, 100000), 0);
  assert_int_equal(sg_bucket_take(&b, 100000), 1);
}

static void test_bucket_retry_after_rounds_up_whole_seconds(void **state) {
  (void)state;
  sg_bucket_t b;
  sg_bucket_init(&b, 0.1, 1.0, 0); /* one every 10 s */
  assert_int_equal(sg_bucket_take(&b, 0), 0);
  assert_int_equal(sg_bucket_take(&b, 0), 10);
  assert_int_equal(sg_bucket_take(&b, 2500), 8); /* 7.5 s left */
  assert_int_equal(sg_bucket_take(&b, 9999), 1);
  assert_int_equal(sg_bucket_take(&b, 10000), 0);
  /* a clock that goes back takes nothing away */
  assert_int_equal(sg_bucket_take(&b, 5000), 10);
}

static const sg_route_t read_or_deploy = {.path = "/v1/endpoints/{endpoint}", .scope = SG_SCOPE_READ | SG_SCOPE_DEPLOY};
static const sg_route_t admin_only = {.path = "/v1/api-keys", .scope = SG_SCOPE_ADMIN};
static const sg_route_t invoke = {.path = "/e/{endpoint}/*", .scope = SG_SCOPE_INVOKE};
static const sg_route_t list = {.path = "/v1/endpoints", .scope = SG_SCOPE_READ, .flags = SG_ROUTE_LISTS_ENDPOINTS};
static const sg_route_t global = {.path = "/metrics", .scope = SG_SCOPE_READ};

static void test_scope_check(void **state) {
  (void)state;
  char *why = NULL;
  assert_int_equal(sg_key_check(SG_SCOPE_READ, NULL, 0, &read_or_deploy, "a", &why), 0);
  assert_int_equal(sg_key_check(SG_SCOPE_DEPLOY, NULL, 0, &read_or_deploy, "a", &why), 0);
  assert_int_equal(sg_key_check(SG_SCOPE_ADMIN, NULL, 0, &admin_only, NULL, &why), 0);
  assert_int_equal(sg_key_check(SG_SCOPE_ADMIN, NULL, 0, &invoke, "a", &why), 0);
  assert_int_equal(sg_key_check(SG_SCOPE_INVOKE, NULL, 0, NULL, NULL, &why), 0); /* no route: 404 for anyone */
  assert_null(why);

  assert_int_equal(sg_key_check(SG_SCOPE_INVOKE, NULL, 0, &read_or_deploy, "a", &why), -1);
  assert_string_equal(why, "this route needs an API key with scope \"deploy\" or \"read\" or \"admin\"");
  free(why);
  why = NULL;
  assert_int_equal(sg_key_check(SG_SCOPE_DEPLOY | SG_SCOPE_READ | SG_SCOPE_INVOKE, NULL, 0, &admin_only, NULL, &why),
                   -1);
  assert_string_equal(why, "this route needs an API key with scope \"admin\"");
  free(why);
  why = NULL;
  assert_int_equal(sg_key_check(SG_SCOPE_READ, NULL, 0, &invoke, "a", &why), -1);
  assert_non_null(strstr(why, "\"invoke\""));
  free(why);
}

static void test_endpoint_limit(void **state) {
  (void)state;
  char *eps[] = {"a", "b", NULL};
  char *why = NULL;
  unsigned s = SG_SCOPE_INVOKE | SG_SCOPE_READ;
  assert_int_equal(sg_key_check(s, eps, 2, &invoke, "a", &why), 0);
  assert_int_equal(sg_key_check(s, eps, 2, &invoke, "b", &why), 0);
  assert_int_equal(sg_key_check(s, eps, 2, &list, NULL, &why), 0);
  assert_null(why);
  assert_int_equal(sg_key_check(s, eps, 2, &invoke, "c", &why), -1);
  assert_non_null(strstr(why, "\"c\""));
  free(why);
  why = NULL;
  assert_int_equal(sg_key_check(s, eps, 2, &invoke, "ab", &why), -1); /* whole names only */
  free(why);
  why = NULL;
  /* routes about no endpoint (and not lists filtered to them) are closed */
  assert_int_equal(sg_key_check(s, eps, 2, &global, NULL, &why), -1);
  assert_non_null(strstr(why, "limited"));
  free(why);
  why = NULL;
  /* the scope is checked first: a limited key still needs the scope */
  assert_int_equal(sg_key_check(SG_SCOPE_INVOKE, eps, 2, &read_or_deploy, "a", &why), -1);
  assert_non_null(strstr(why, "needs an API key with scope"));
  free(why);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bucket_starts_full_and_refills_at_its_rate),
      cmocka_unit_test(test_bucket_retry_after_rounds_up_whole_seconds),
      cmocka_unit_test(test_scope_check),
      cmocka_unit_test(test_endpoint_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
