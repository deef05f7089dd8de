/* The pure parts of the job API (gateway/jobs-proto.c), the jobs table
 * (store/jobs.c) and the job writer's group commit (gateway/job-writer.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <ftw.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <sys/stat.h>

#include "gateway/job-writer.h"
#include "gateway/jobs-proto.h"
#include "sgpu/jobs-store.h"
#include "sgpu/util.h"
#include "store/store-internal.h"

/* ---- submissions ---- */

static int submit(const char *body, size_t max, sg_job_submit_t *s, sg_error_t **err) {
  return sg_job_submit_parse(body, strlen(body), max, s, err);
}

static void expect_submit_error(const char *body, int status, const char *field) {
  sg_job_submit_t s;
  sg_error_t *err = NULL;
  assert_true(submit(body, 1000, &s, &err) < 0);
  assert_non_null(err);
  assert_int_equal(err->status, status);
  if (field) {
    assert_non_null(err->field);
    assert_string_equal(err->field, field);
  }
  assert_null(s.input);
  sg_error_free(err);
}

static void test_submit_valid(void **state) {
  (void)state;
  sg_job_submit_t s;
  sg_error_t *err = NULL;
  assert_int_equal(submit("{\"input\": {\"a\": [1, 2]}, \"webhook\": \"https://example.com/h?x=1\","
                          " \"policy\": {\"executionTimeout\": 5000, \"ttl\": 60000}}",
                          1000, &s, &err),
                   0);
  assert_string_equal(s.input, "{\"a\":[1,2]}");
  assert_int_equal(s.input_len, strlen(s.input));
  assert_string_equal(s.webhook, "https://example.com/h?x=1");
  assert_int_equal(s.exec_timeout_ms, 5000);
  assert_int_equal(s.ttl_ms, 60000);
  sg_job_submit_clear(&s);
  assert_int_equal(submit("{\"input\": \"text\"}", 1000, &s, &err), 0);
  assert_string_equal(s.input, "\"text\"");
  assert_null(s.webhook);
  assert_int_equal(s.exec_timeout_ms, 0);
  sg_job_submit_clear(&s);
  assert_int_equal(submit("{\"input\": null, \"webhook\": null, \"policy\": null}", 1000, &s, &err), 0);
  assert_string_equal(s.input, "null");
  sg_job_submit_clear(&s);
}

static void test_submit_invalid(void **state) {
  (void)state;
  expect_submit_error("", SG_EJSON, NULL);
  expect_submit_error("{", SG_EJSON, NULL);
  expect_submit_error("[1]", SG_EJSON, NULL);
  expect_submit_error("{\"input\": 1, \"input\": 2}", SG_EJSON, NULL);
  expect_submit_error("{}", SG_EINVAL, "input");
  expect_submit_error("{\"input\": 1, \"extra\": 2}", SG_EINVAL, "extra");
  expect_submit_error("{\"input\": 1, \"webhook\": 3}", SG_EINVAL, "webhook");
  expect_submit_error("{\"input\": 1, \"webhook\": \"file:///etc/passwd\"}", SG_EINVAL, "webhook");
  expect_submit_error("{\"input\": 1, \"webhook\": \"http://u:p@host/\"}", SG_EINVAL, "webhook");
  expect_submit_error("{\"input\": 1, \"webhook\": \"http://a b/\"}", SG_EINVAL, "webhook");
  expect_submit_error("{\"input\": 1, \"policy\": 5}", SG_EINVAL, "policy");
  expect_submit_error("{\"input\": 1, \"policy\": {\"ttl\": 0}}", SG_EINVAL, "policy.ttl");
  expect_submit_error("{\"input\": 1, \"policy\": {\"ttl\": 1.5}}", SG_EINVAL, "policy.ttl");
  expect_submit_error("{\"input\": 1, \"policy\": {\"executionTimeout\": 999999999999}}", SG_EINVAL,
                      "policy.executionTimeout");
  expect_submit_error("{\"input\": 1, \"policy\": {\"priority\": 1}}", SG_EINVAL, "policy.priority");
  /* The limit applies to the input as compact JSON. */
  sg_job_submit_t s;
  sg_error_t *err = NULL;
  assert_int_equal(submit("{\"input\": \"12345678\"}", 10, &s, &err), 0);
  sg_job_submit_clear(&s);
  assert_true(submit("{\"input\": \"123456789\"}", 10, &s, &err) < 0);
  assert_int_equal(err->status, SG_ETOOLARGE);
  sg_error_free(err);
}

/* ---- worker answers ---- */

static void expect_result(int status, const char *body, sg_job_status_t want, const char *output, const char *error) {
  sg_job_result_t r;
  sg_job_result_parse(status, body, strlen(body), &r);
  assert_int_equal(r.status, want);
  if (output)
    assert_string_equal(r.output, output);
  else
    assert_null(r.output);
  if (error)
    assert_string_equal(r.error, error);
  else if (want == SG_JOB_COMPLETED)
    assert_null(r.error);
  sg_job_result_clear(&r);
}

static void test_result(void **state) {
  (void)state;
  expect_result(200, "{\"output\": {\"x\": 1}}", SG_JOB_COMPLETED, "{\"x\":1}", NULL);
  expect_result(200, "{\"output\": null}", SG_JOB_COMPLETED, "null", NULL);
  expect_result(200, "{\"error\": \"boom\"}", SG_JOB_FAILED, NULL, "\"boom\"");
  expect_result(200, "{\"error\": {\"code\": 7}, \"output\": 1}", SG_JOB_FAILED, NULL, "{\"code\":7}");
  expect_result(200, "{\"error\": null, \"output\": 2}", SG_JOB_COMPLETED, "2", NULL);
  expect_result(200, "{\"error\": \"\", \"output\": 2}", SG_JOB_COMPLETED, "2", NULL);
  expect_result(200, "{\"result\": 3}", SG_JOB_COMPLETED, "{\"result\":3}", NULL);
  expect_result(200, "[1,2]", SG_JOB_COMPLETED, "[1,2]", NULL);
  expect_result(200, "plain text", SG_JOB_COMPLETED, "\"plain text\"", NULL);
  expect_result(204, "", SG_JOB_COMPLETED, "null", NULL);
  sg_job_result_t r;
  sg_job_result_parse(500, "oops", 4, &r);
  assert_int_equal(r.status, SG_JOB_FAILED);
  assert_non_null(strstr(r.error, "HTTP 500"));
  assert_non_null(strstr(r.error, "oops"));
  assert_null(r.output);
  sg_job_result_clear(&r);
}

/* ---- RunPod's worker protocol: result, stream and ping bodies ---- */

static void expect_rp(const char *body, bool progress, sg_job_status_t want, const char *output, const char *error,
                      bool stop_pod) {
  sg_rp_result_t r;
  sg_error_t *err = NULL;
  assert_int_equal(sg_rp_result_parse(body, strlen(body), &r, &err), 0);
  assert_null(err);
  assert_int_equal(r.progress, progress);
  if (!progress)
    assert_int_equal(r.status, want);
  if (output)
    assert_string_equal(r.output, output);
  else
    assert_null(r.output);
  if (error)
    assert_string_equal(r.error, error);
  else
    assert_null(r.error);
  assert_int_equal(r.stop_pod, stop_pod);
  sg_rp_result_clear(&r);
  assert_null(r.output);
}

static void expect_rp_error(const char *body, size_t len, int status, const char *field) {
  sg_rp_result_t r;
  sg_error_t *err = NULL;
  assert_true(sg_rp_result_parse(body, len, &r, &err) < 0);
  assert_non_null(err);
  assert_non_null(err->message);
  assert_int_equal(err->status, status);
  if (field) {
    assert_non_null(err->field);
    assert_string_equal(err->field, field);
  }
  assert_null(r.output);
  assert_null(r.error);
  sg_error_free(err);
}

static void test_rp_result(void **state) {
  (void)state;
  /* The shapes the SDK posts (see the protocol reference). */
  expect_rp("{\"output\": {\"text\": \"hi\"}}", false, SG_JOB_COMPLETED, "{\"text\":\"hi\"}", NULL, false);
  expect_rp("{\"output\": {\"partial\": 1}, \"error\": \"bad prompt\"}", false, SG_JOB_FAILED, "{\"partial\":1}",
            "\"bad prompt\"", false);
  expect_rp("{\"error\": \"{\\\"error_type\\\": \\\"<class 'ValueError'>\\\", \\\"error_message\\\": \\\"x\\\"}\"}",
            false, SG_JOB_FAILED, NULL,
            "\"{\\\"error_type\\\": \\\"<class 'ValueError'>\\\", \\\"error_message\\\": \\\"x\\\"}\"", false);
  expect_rp("{\"output\": {\"done\": true}, \"stopPod\": true}", false, SG_JOB_COMPLETED, "{\"done\":true}", NULL,
            true);
  expect_rp("{\"output\": 1, \"stopPod\": false}", false, SG_JOB_COMPLETED, "1", NULL, false);
  expect_rp("{\"output\": 1, \"stopPod\": null}", false, SG_JOB_COMPLETED, "1", NULL, false);
  expect_rp("{\"status\": \"IN_PROGRESS\", \"output\": \"50%\"}", true, 0, "\"50%\"", NULL, false);
  /* Progress never ends the job, whatever else it carries. */
  expect_rp("{\"status\": \"IN_PROGRESS\", \"output\": 1, \"error\": \"x\"}", true, 0, "1", NULL, false);
  expect_rp("{\"status\": \"IN_PROGRESS\"}", true, 0, NULL, NULL, false);
  expect_rp("{\"output\": [\"a\", \"b\"]}", false, SG_JOB_COMPLETED, "[\"a\",\"b\"]", NULL, false);
  expect_rp("{\"output\": []}", false, SG_JOB_COMPLETED, "[]", NULL, false);
  expect_rp("{}", false, SG_JOB_COMPLETED, NULL, NULL, false);
  expect_rp("{\"output\": null}", false, SG_JOB_COMPLETED, "null", NULL, false);
  expect_rp("{\"error\": null, \"output\": 2}", false, SG_JOB_COMPLETED, "2", NULL, false);
  expect_rp("{\"error\": \"\", \"output\": 2}", false, SG_JOB_COMPLETED, "2", NULL, false);
  expect_rp("{\"error\": {\"code\": 7}}", false, SG_JOB_FAILED, NULL, "{\"code\":7}", false);
  expect_rp("{\"status\": \"COMPLETED\", \"output\": 3}", false, SG_JOB_COMPLETED, "3", NULL, false);
  expect_rp("{\"status\": null, \"output\": 3}", false, SG_JOB_COMPLETED, "3", NULL, false);
  expect_rp("{\"status\": \"FAILED\", \"error\": \"oom\"}", false, SG_JOB_FAILED, NULL, "\"oom\"", false);
  /* A worker that says FAILED fails the job even without an error. */
  expect_rp("{\"status\": \"FAILED\", \"output\": 3}", false, SG_JOB_FAILED, "3",
            "\"the worker reported FAILED without an error\"", false);
  expect_rp("{\"status\": \"FAILED\", \"error\": \"\"}", false, SG_JOB_FAILED, NULL,
            "\"the worker reported FAILED without an error\"", false);
  /* A NUL inside a string stays JSON text. */
  static const char nul[] = "{\"output\": \"a\\u0000b\"}";
  expect_rp(nul, false, SG_JOB_COMPLETED, "\"a\\u0000b\"", NULL, false);

  expect_rp_error("", 0, SG_EJSON, NULL);
  expect_rp_error("{", 1, SG_EJSON, NULL);
  expect_rp_error("[1]", 3, SG_EJSON, NULL);
  expect_rp_error("\"output\"", 8, SG_EJSON, NULL);
  expect_rp_error("output=1", 8, SG_EJSON, NULL);
  expect_rp_error("{\"output\": 1}\0junk", 18, SG_EJSON, NULL);
  expect_rp_error("{\"stopPod\": \"yes\"}", 18, SG_EINVAL, "stopPod");
  expect_rp_error("{\"status\": \"DONE\"}", 18, SG_EINVAL, "status");
  expect_rp_error("{\"status\": 1, \"output\": 1}", 26, SG_EINVAL, "status");
  expect_rp_error("{\"status\": \"in_progress\"}", 25, SG_EINVAL, "status");
}

static void test_rp_stream(void **state) {
  (void)state;
  char *out = NULL;
  sg_error_t *err = NULL;
  assert_int_equal(sg_rp_stream_parse("{\"output\": {\"token\": \"a\"}}", 26, &out, &err), 0);
  assert_string_equal(out, "{\"token\":\"a\"}");
  free(out);
  assert_int_equal(sg_rp_stream_parse("{\"output\": null}", 16, &out, &err), 0);
  assert_string_equal(out, "null");
  free(out);
  assert_int_equal(sg_rp_stream_parse("{\"output\": \"t\", \"extra\": 1}", 27, &out, &err), 0);
  assert_string_equal(out, "\"t\"");
  free(out);
  static const struct {
    const char *body;
    int status;
    const char *field;
  } bad[] = {
      {"", SG_EJSON, NULL},       {"[]", SG_EJSON, NULL},      {"\"x\"", SG_EJSON, NULL},
      {"{\"out", SG_EJSON, NULL}, {"{}", SG_EINVAL, "output"}, {"{\"chunk\": 1}", SG_EINVAL, "output"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    out = (char *)"untouched";
    assert_true(sg_rp_stream_parse(bad[i].body, strlen(bad[i].body), &out, &err) < 0);
    assert_null(out);
    assert_non_null(err);
    assert_non_null(err->message);
    assert_int_equal(err->status, bad[i].status);
    if (bad[i].field)
      assert_string_equal(err->field, bad[i].field);
    sg_error_free(err);
    err = NULL;
  }
}

static void expect_ids(const char *list, size_t n, const char *const *want) {
  char **ids = (char **)1;
  assert_int_equal(sg_rp_ids_parse(list, &ids), n);
  if (!n)
    assert_null(ids);
  for (size_t i = 0; i < n; i++)
    assert_string_equal(ids[i], want[i]);
  sg_rp_ids_free(ids, n);
}

static void test_rp_ids(void **state) {
  (void)state;
  expect_ids(NULL, 0, NULL);
  expect_ids("", 0, NULL);
  expect_ids(",,,", 0, NULL);
  expect_ids("a/b,c d,%2C", 0, NULL);
  expect_ids("job-1", 1, (const char *[]){"job-1"});
  expect_ids("a,b,a,,c,b", 3, (const char *[]){"a", "b", "c"});
  expect_ids(",x_1,", 1, (const char *[]){"x_1"});
  /* Invalid entries are skipped, valid ones around them kept. */
  expect_ids("a,../etc,b", 2, (const char *[]){"a", "b"});
  char long_id[70];
  memset(long_id, 'z', 65);
  long_id[65] = '\0';
  char *list = xasprintf("%s,ok", long_id);
  expect_ids(list, 1, (const char *[]){"ok"});
  free(list);

  /* At most SG_RP_IDS_MAX distinct ids. */
  size_t cap = (SG_RP_IDS_MAX + 10) * 8;
  char *big = xmalloc(cap), *p = big;
  for (int i = 0; i < SG_RP_IDS_MAX + 10; i++)
    p += sprintf(p, "%s%d", i ? "," : "", i);
  char **ids = NULL;
  size_t n = sg_rp_ids_parse(big, &ids);
  assert_int_equal(n, SG_RP_IDS_MAX);
  assert_string_equal(ids[0], "0");
  assert_string_equal(ids[SG_RP_IDS_MAX - 1], "1023");
  sg_rp_ids_free(ids, n);

  /* Only the first SG_RP_IDS_MAX entries are looked at, repeats and
   * invalid ones included: a list of repeats costs no more than a full one. */
  p = big;
  for (int i = 0; i < SG_RP_IDS_MAX; i++)
    p += sprintf(p, "dup,");
  sprintf(p, "late");
  n = sg_rp_ids_parse(big, &ids);
  assert_int_equal(n, 1);
  assert_string_equal(ids[0], "dup");
  sg_rp_ids_free(ids, n);
  free(big);
}

static void expect_param(const char *query, const char *name, const char *want) {
  char *v = sg_rp_query_param(query, name);
  if (want)
    assert_string_equal(v, want);
  else
    assert_null(v);
  free(v);
}

static void test_rp_query_param(void **state) {
  (void)state;
  /* What the SDK appends to the URLs sgpud gave it. */
  const char *ping = "gpu=a100&job_id=3f2c1d9e-7a1b%2Csync-5d3c&runpod_version=1.12.0";
  expect_param(ping, "job_id", "3f2c1d9e-7a1b,sync-5d3c");
  expect_param(ping, "gpu", "a100");
  expect_param(ping, "runpod_version", "1.12.0");
  expect_param(ping, "status", NULL);
  expect_param("gpu=none&job_in_progress=0&batch_size=3", "batch_size", "3");
  expect_param("gpu=none&isStream=true", "isStream", "true");
  expect_param("job_id=", "job_id", "");
  expect_param("", "job_id", NULL);
  expect_param(NULL, "job_id", NULL);
  /* Percent and plus decoding as in a form; a broken escape stays as it is. */
  expect_param("job_id=%41%2c%2C", "job_id", "A,,");
  expect_param("reason=out+of%20memory", "reason", "out of memory");
  expect_param("job_id=a%2", "job_id", "a%2");
  expect_param("job_id=a%zz", "job_id", "a%zz");
  /* The first of repeated names; a longer name that ends in it is another. */
  expect_param("job_id=a&job_id=b", "job_id", "a");
  expect_param("xjob_id=1&job_id=2", "job_id", "2");
  expect_param("job_id", "job_id", NULL);
  /* A malformed element (no '=', empty, empty name) hides nothing else: a
   * ping's job ids must not vanish, or its jobs would look lost. */
  expect_param("gpu=none&flag&job_id=a", "job_id", "a");
  expect_param("gpu=none&&job_id=a&", "job_id", "a");
  expect_param("=x&job_id=a", "job_id", "a");
  expect_param("status=unhealthy&check&job_id=j1%2Cj2", "job_id", "j1,j2");
  /* The decoded list is what sg_rp_ids_parse splits. */
  char *list = sg_rp_query_param(ping, "job_id");
  char **ids = NULL;
  size_t n = sg_rp_ids_parse(list, &ids);
  assert_int_equal(n, 2);
  assert_string_equal(ids[1], "sync-5d3c");
  sg_rp_ids_free(ids, n);
  free(list);
}

/* ---- ids and states ---- */

static void test_ids_and_states(void **state) {
  (void)state;
  char *a = sg_job_new_id(), *b = sg_job_new_id();
  assert_int_equal(strlen(a), 36);
  assert_true(sg_job_id_valid(a));
  assert_string_not_equal(a, b);
  assert_int_equal(a[14], '4');
  free(a);
  free(b);
  assert_false(sg_job_id_valid(""));
  assert_false(sg_job_id_valid("a/b"));
  assert_false(sg_job_id_valid("a b"));
  char long_id[80];
  memset(long_id, 'a', 65);
  long_id[65] = '\0';
  assert_false(sg_job_id_valid(long_id));
  long_id[64] = '\0';
  assert_true(sg_job_id_valid(long_id));
  for (int s = SG_JOB_IN_QUEUE; s <= SG_JOB_TIMED_OUT; s++)
    assert_int_equal(sg_job_status_parse(sg_job_status_name(s)), s);
  assert_int_equal(sg_job_status_parse("DONE"), -1);
  assert_false(sg_job_status_final(SG_JOB_IN_PROGRESS));
  assert_true(sg_job_status_final(SG_JOB_TIMED_OUT));
}

/* ---- webhook allow-list ---- */

static struct sockaddr_storage addr(const char *text) {
  struct sockaddr_storage ss = {0};
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, text, &s4->sin_addr) == 1)
    s4->sin_family = AF_INET;
  else if (inet_pton(AF_INET6, text, &s6->sin6_addr) == 1)
    s6->sin6_family = AF_INET6;
  else
    fail_msg("bad address %s", text);
  return ss;
}

static bool public(const char *text) {
  struct sockaddr_storage ss = addr(text);
  return sg_addr_is_public((struct sockaddr *)&ss);
}

static bool allowed(const sg_addr_rule_t *rules, size_t n, const char *text) {
  struct sockaddr_storage ss = addr(text);
  return sg_addr_allowed(rules, n, (struct sockaddr *)&ss);
}

static void test_allow_list(void **state) {
  (void)state;
  assert_true(public("8.8.8.8"));
  assert_true(public("1.1.1.1"));
  assert_true(public("2606:4700::1111"));
  const char *internal[] = {"127.0.0.1",       "10.1.2.3",        "172.16.0.1", "172.31.255.255",
                            "192.168.1.1",     "169.254.169.254", "100.64.0.1", "0.0.0.0",
                            "224.0.0.1",       "255.255.255.255", "::1",        "::",
                            "fe80::1",         "fd00::1",         "ff02::1",    "::ffff:127.0.0.1",
                            "::ffff:10.0.0.1", "2001:db8::1"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(internal); i++)
    assert_false(public(internal[i]));
  assert_true(public("172.32.0.1"));
  assert_true(public("::ffff:8.8.8.8"));

  sg_addr_rule_t rules[3];
  sg_error_t *err = NULL;
  assert_int_equal(sg_addr_rule_parse("public", &rules[0], &err), 0);
  assert_int_equal(sg_addr_rule_parse("127.0.0.1/32", &rules[1], &err), 0);
  assert_int_equal(sg_addr_rule_parse("fd00::/8", &rules[2], &err), 0);
  assert_true(allowed(rules, 1, "8.8.8.8"));
  assert_false(allowed(rules, 1, "127.0.0.1"));
  assert_true(allowed(rules, 2, "127.0.0.1"));
  assert_true(allowed(rules, 2, "::ffff:127.0.0.1"));
  assert_false(allowed(rules, 2, "127.0.0.2"));
  assert_false(allowed(rules, 2, "fd12::1"));
  assert_true(allowed(rules, 3, "fd12::1"));
  assert_false(allowed(rules, 3, "fe80::1"));
  assert_false(allowed(rules, 0, "8.8.8.8"));
  assert_int_equal(sg_addr_rule_parse("10.0.0.0/8", &rules[0], &err), 0);
  assert_true(allowed(rules, 1, "10.200.1.1"));
  assert_false(allowed(rules, 1, "11.0.0.1"));
  assert_int_equal(sg_addr_rule_parse("10.0.0.0/12", &rules[0], &err), 0);
  assert_true(allowed(rules, 1, "10.15.0.1"));
  assert_false(allowed(rules, 1, "10.16.0.1"));
  /* An IPv4-mapped rule admits the IPv4 address, plain or mapped. */
  assert_int_equal(sg_addr_rule_parse("::ffff:10.0.0.1", &rules[0], &err), 0);
  assert_true(allowed(rules, 1, "10.0.0.1"));
  assert_true(allowed(rules, 1, "::ffff:10.0.0.1"));
  assert_false(allowed(rules, 1, "10.0.0.2"));
  assert_int_equal(sg_addr_rule_parse("::ffff:10.0.0.0/104", &rules[0], &err), 0);
  assert_true(allowed(rules, 1, "10.9.9.9"));
  assert_false(allowed(rules, 1, "11.0.0.1"));
  const char *bad[] = {"", "localhost", "10.0.0.0/33", "10.0.0.0/", "::1/129", "1.2.3.4/x", "everything"};
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    assert_true(sg_addr_rule_parse(bad[i], &rules[0], &err) < 0);
    sg_error_free(err);
    err = NULL;
  }
}

/* ---- the store and the writer ---- */

typedef struct fixture {
  char *dir, *path;
  sg_store_t *store;
} fixture_t;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  char tmpl[] = "/tmp/sgpu-test-jobs-XXXXXX";
  if (!mkdtemp(tmpl))
    return -1;
  fixture_t *f = xcalloc(1, sizeof(*f));
  f->dir = xstrdup(tmpl);
  f->path = xasprintf("%s/state.db", tmpl);
  sg_error_t *err = NULL;
  f->store = sg_store_open(f->path, &err);
  if (!f->store)
    return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  sg_store_close(f->store);
  nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f->dir);
  free(f->path);
  free(f);
  return 0;
}

static sg_job_record_t record(const char *id, sg_job_status_t status) {
  return (sg_job_record_t){.id = id,
                           .endpoint = "ep",
                           .status = status,
                           .input = "{\"x\":1}",
                           .exec_timeout_ms = 1000,
                           .ttl_ms = 60000,
                           .created_ms = 1000};
}

typedef struct seen {
  char ids[16][40];
  sg_job_status_t status[16];
  int attempts[16];
  char output[64];
  size_t n;
} seen_t;

static void collect(void *ud, const sg_job_record_t *r) {
  seen_t *s = ud;
  assert_true(s->n < 16);
  snprintf(s->ids[s->n], sizeof(s->ids[0]), "%s", r->id);
  s->status[s->n] = r->status;
  s->attempts[s->n] = r->attempts;
  snprintf(s->output, sizeof(s->output), "%s", r->output ? r->output : "");
  s->n++;
}

static void test_store_apply_get_recover(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  sg_job_write_t w[4] = {
      {true, record("a", SG_JOB_IN_QUEUE), 0},
      {true, record("b", SG_JOB_IN_QUEUE), 0},
      {true, record("a", SG_JOB_IN_QUEUE), 0}, /* a taken id fails alone */
      {false, record("zz", SG_JOB_FAILED), 0}, /* no such row */
  };
  assert_int_equal(sg_store_jobs_apply(f->store, w, 4, &err), 0);
  assert_int_equal(w[0].result, 0);
  assert_int_equal(w[1].result, 0);
  assert_int_equal(w[2].result, -SG_EEXIST);
  assert_int_equal(w[3].result, -SG_ENOTFOUND);

  sg_job_write_t u[2] = {{false, record("a", SG_JOB_IN_PROGRESS), 0}, {false, record("b", SG_JOB_COMPLETED), 0}};
  u[0].rec.attempts = 1;
  u[1].rec.output = "{\"ok\":true}";
  u[1].rec.finished_ms = 5000;
  u[1].rec.expires_ms = 9000;
  assert_int_equal(sg_store_jobs_apply(f->store, u, 2, &err), 0);

  seen_t s = {0};
  assert_int_equal(sg_store_jobs_get(f->store, "ep", "b", collect, &s, &err), 0);
  assert_int_equal(s.status[0], SG_JOB_COMPLETED);
  assert_string_equal(s.output, "{\"ok\":true}");
  assert_true(sg_store_jobs_get(f->store, "other", "b", collect, &s, &err) < 0);
  assert_int_equal(err->status, SG_ENOTFOUND);
  sg_error_free(err);
  err = NULL;

  memset(&s, 0, sizeof(s));
  assert_int_equal(sg_store_jobs_each_open(f->store, collect, &s, &err), 0);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.ids[0], "a");
  assert_int_equal(s.status[0], SG_JOB_IN_PROGRESS);
  assert_int_equal(s.attempts[0], 1);

  assert_int_equal(sg_store_jobs_expire(f->store, 8999, &err), 0);
  assert_int_equal(sg_store_jobs_expire(f->store, 9000, &err), 1);
  assert_true(sg_store_jobs_get(f->store, "ep", "b", collect, &s, &err) < 0);
  sg_error_free(err);
}

/* The list: one endpoint's jobs, newest first (same time: later insert
 * first), filtered by status and time, at most limit. */
static void test_store_list(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  sg_job_write_t w[5] = {
      {true, record("old", SG_JOB_COMPLETED), 0},  {true, record("mid", SG_JOB_FAILED), 0},
      {true, record("new", SG_JOB_COMPLETED), 0},  {true, record("same", SG_JOB_IN_QUEUE), 0},
      {true, record("else", SG_JOB_COMPLETED), 0},
  };
  w[0].rec.created_ms = 100;
  w[1].rec.created_ms = 200;
  w[2].rec.created_ms = 300;
  w[3].rec.created_ms = 300;
  w[4].rec.endpoint = "other";
  assert_int_equal(sg_store_jobs_apply(f->store, w, 5, &err), 0);

  seen_t s = {0};
  assert_int_equal(sg_store_jobs_list(f->store, "ep", -1, 0, 10, collect, &s, &err), 0);
  assert_int_equal(s.n, 4);
  assert_string_equal(s.ids[0], "same");
  assert_string_equal(s.ids[1], "new");
  assert_string_equal(s.ids[2], "mid");
  assert_string_equal(s.ids[3], "old");

  memset(&s, 0, sizeof(s));
  assert_int_equal(sg_store_jobs_list(f->store, "ep", SG_JOB_COMPLETED, 0, 10, collect, &s, &err), 0);
  assert_int_equal(s.n, 2);
  assert_string_equal(s.ids[0], "new");
  assert_string_equal(s.ids[1], "old");

  memset(&s, 0, sizeof(s));
  assert_int_equal(sg_store_jobs_list(f->store, "ep", -1, 300, 1, collect, &s, &err), 0);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.ids[0], "mid");

  memset(&s, 0, sizeof(s));
  assert_int_equal(sg_store_jobs_list(f->store, "none", -1, 0, 10, collect, &s, &err), 0);
  assert_int_equal(s.n, 0);
}

/* A page of one endpoint's jobs is a range of the index of migration 10,
 * neither a scan of every job nor a sort (bench-jobs-list times both). */
static void test_store_list_uses_the_index(void **state) {
  fixture_t *f = *state;
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
  sqlite3_stmt *st = NULL;
  assert_int_equal(
      sqlite3_prepare_v2(db, "EXPLAIN QUERY PLAN SELECT * FROM jobs" SG_STORE_JOBS_LIST_WHERE, -1, &st, NULL),
      SQLITE_OK);
  char plan[512] = "";
  while (sqlite3_step(st) == SQLITE_ROW) {
    size_t len = strlen(plan);
    snprintf(plan + len, sizeof(plan) - len, "%s; ", (const char *)sqlite3_column_text(st, 3));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  assert_non_null(strstr(plan, "USING INDEX jobs_endpoint_created (endpoint=? AND created_ms<?)"));
  assert_null(strstr(plan, "TEMP B-TREE"));
}

typedef struct wstate {
  struct event_base *base;
  int done, failed, order_errors;
  int last;
  int want;
} wstate_t;

static int tags[64];
static wstate_t wst;

/* Checks that callbacks come in the order the writes were queued. */
static void on_written(void *arg, int result) {
  int tag = *(int *)arg;
  if (result < 0)
    wst.failed++;
  if (tag != wst.last + 1)
    wst.order_errors++;
  wst.last = tag;
  if (++wst.done == wst.want)
    event_base_loopbreak(wst.base);
}

static void test_writer_group_commit(void **state) {
  fixture_t *f = *state;
  sg_error_t *err = NULL;
  memset(&wst, 0, sizeof(wst));
  wst.base = event_base_new();
  sg_job_writer_t *w = sg_job_writer_start(wst.base, f->path, 0, &err);
  assert_non_null(w);
  /* Hold the database's write lock while the writes are queued: the writer
   * may take the first few and then waits for the lock (busy timeout 5 s),
   * so all the others are queued together by the time it can commit. A
   * writer that groups commits them in at most two transactions; one that
   * commits each write alone needs 63. */
  sqlite3 *holder = NULL;
  assert_int_equal(sqlite3_open(f->path, &holder), SQLITE_OK);
  assert_int_equal(sqlite3_exec(holder, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  char ids[64][8];
  for (int i = 0; i < 64; i++) {
    snprintf(ids[i], sizeof(ids[i]), "j%d", i);
    tags[i] = i + 1;
    sg_job_record_t r = record(ids[i], SG_JOB_IN_QUEUE);
    if (i < 63)
      sg_job_writer_put(w, true, &r, on_written, &tags[i]);
  }
  tags[63] = 64;
  sg_job_writer_barrier(w, on_written, &tags[63]);
  assert_int_equal(sqlite3_exec(holder, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(holder);
  wst.want = 64;
  event_base_dispatch(wst.base);
  assert_int_equal(wst.done, 64);
  assert_int_equal(wst.failed, 0);
  assert_int_equal(wst.order_errors, 0);
  sg_job_writer_stats_t st;
  sg_job_writer_get_stats(w, &st);
  assert_int_equal(st.writes, 63);
  assert_true(st.commits >= 1 && st.commits <= 2);
  assert_int_equal(sg_job_writer_backlog(w), 0);
  sg_job_writer_stop(w);
  event_base_free(wst.base);
  seen_t s = {0};
  assert_int_equal(sg_store_jobs_get(f->store, "ep", "j62", collect, &s, &err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_submit_valid),
      cmocka_unit_test(test_submit_invalid),
      cmocka_unit_test(test_result),
      cmocka_unit_test(test_rp_result),
      cmocka_unit_test(test_rp_stream),
      cmocka_unit_test(test_rp_ids),
      cmocka_unit_test(test_rp_query_param),
      cmocka_unit_test(test_ids_and_states),
      cmocka_unit_test(test_allow_list),
      cmocka_unit_test_setup_teardown(test_store_apply_get_recover, setup, teardown),
      cmocka_unit_test_setup_teardown(test_store_list, setup, teardown),
      cmocka_unit_test_setup_teardown(test_store_list_uses_the_index, setup, teardown),
      cmocka_unit_test_setup_teardown(test_writer_group_commit, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
