/* Fuzz target for the RunPod-style job bodies (gateway/jobs-proto.c): the
 * POST /run and /runsync body (input, webhook, policy), a worker's answer to
 * a job, and the webhook allow-list entries and job ids that come with them.
 *
 * A body either parses or fails with a message (naming the field for
 * SG_EINVAL). A parsed body holds its input as compact JSON within the limit,
 * a webhook that passes the URL check and policy values within their bounds,
 * and survives the round trip: written back as a body, it parses to the same
 * thing. A worker's answer always becomes a finished job whose output or error
 * is JSON text.
 *
 * The same bytes are a pull worker's result, stream and ping bodies (RunPod's
 * worker protocol): a parsed result's output and error are JSON text,
 * progress never carries an error or a final status, a failed job always has
 * an error; a stream chunk is JSON text; a ping's job ids are valid, unique,
 * at most SG_RP_IDS_MAX and in the list; every refusal carries a message; a
 * query value percent-encoded decodes to itself. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/jobs-proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* JSON text (a string may hold \u0000: a worker's answer may). */
static bool is_json(const char *text) {
  json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  json_decref(j);
  return j != NULL;
}

static void check_submit(const sg_job_submit_t *s, size_t max_input) {
  if (!s->input || s->input_len != strlen(s->input) || s->input_len > max_input || !is_json(s->input))
    abort();
  if (s->webhook && sg_webhook_url_check(s->webhook, NULL) < 0)
    abort();
  if (s->exec_timeout_ms && (s->exec_timeout_ms < SG_JOB_TIMEOUT_MIN_MS || s->exec_timeout_ms > SG_JOB_TIMEOUT_MAX_MS))
    abort();
  if (s->ttl_ms && (s->ttl_ms < SG_JOB_TIMEOUT_MIN_MS || s->ttl_ms > SG_JOB_TIMEOUT_MAX_MS))
    abort();

  json_t *body = json_object();
  json_object_set_new(body, "input", json_loads(s->input, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL));
  if (s->webhook)
    json_object_set_new(body, "webhook", json_string(s->webhook));
  json_t *policy = json_object();
  if (s->exec_timeout_ms)
    json_object_set_new(policy, "executionTimeout", json_integer(s->exec_timeout_ms));
  if (s->ttl_ms)
    json_object_set_new(policy, "ttl", json_integer(s->ttl_ms));
  json_object_set_new(body, "policy", policy);
  char *text = json_dumps(body, 0);
  if (!text)
    abort();
  sg_job_submit_t again;
  sg_error_t *err = NULL;
  if (sg_job_submit_parse(text, strlen(text), max_input, &again, &err) < 0)
    abort();
  if (strcmp(again.input, s->input) || again.input_len != s->input_len || again.exec_timeout_ms != s->exec_timeout_ms ||
      again.ttl_ms != s->ttl_ms || (!again.webhook != !s->webhook) || (s->webhook && strcmp(again.webhook, s->webhook)))
    abort();
  sg_job_submit_clear(&again);
  free(text);
  json_decref(body);
}

static void check_result(int status, const uint8_t *data, size_t size) {
  sg_job_result_t r;
  sg_job_result_parse(status, (const char *)data, size, &r);
  if (r.status == SG_JOB_COMPLETED) {
    if (!r.output || r.error || !is_json(r.output))
      abort();
  } else if (r.status == SG_JOB_FAILED) {
    if (!r.error || r.output || !is_json(r.error))
      abort();
  } else {
    abort();
  }
  if ((status < 200 || status > 299) && r.status != SG_JOB_FAILED)
    abort();
  sg_job_result_clear(&r);
}

/* A refusal of a pull worker's body: a message, and a field for SG_EINVAL. */
static void check_refusal(sg_error_t *err) {
  if (!err || !err->message || !*err->message)
    abort();
  if (err->status != SG_EJSON && err->status != SG_EINVAL)
    abort();
  if (err->status == SG_EINVAL && (!err->field || !*err->field))
    abort();
  sg_error_free(err);
}

static void check_rp_result(const uint8_t *data, size_t size) {
  sg_rp_result_t r;
  sg_error_t *err = NULL;
  if (sg_rp_result_parse((const char *)data, size, &r, &err) < 0) {
    if (r.output || r.error || r.progress || r.stop_pod)
      abort();
    check_refusal(err);
    return;
  }
  if (err)
    abort();
  if (r.output && !is_json(r.output))
    abort();
  if (r.error && !is_json(r.error))
    abort();
  if (r.progress) {
    if (r.error || r.status == SG_JOB_COMPLETED || r.status == SG_JOB_FAILED)
      abort();
  } else if (r.status == SG_JOB_FAILED) {
    if (!r.error)
      abort();
  } else if (r.status != SG_JOB_COMPLETED || r.error) {
    abort();
  }
  /* The body was a JSON object: what the parser read is what it holds. */
  json_t *j = json_loadb((const char *)data, size, JSON_ALLOW_NUL, NULL);
  if (!json_is_object(j))
    abort();
  if (!json_object_get(j, "output") != !r.output)
    abort();
  if (r.stop_pod != json_is_true(json_object_get(j, "stopPod")))
    abort();
  /* A worker that says the job failed, or gives an error, fails it. */
  json_t *st = json_object_get(j, "status"), *e = json_object_get(j, "error");
  if (json_is_string(st) && !strcmp(json_string_value(st), "FAILED") && r.status != SG_JOB_FAILED)
    abort();
  if (!r.progress && e && !json_is_null(e) && !(json_is_string(e) && !json_string_length(e)) &&
      r.status != SG_JOB_FAILED)
    abort();
  if (r.progress != (json_is_string(st) && !strcmp(json_string_value(st), "IN_PROGRESS")))
    abort();
  json_decref(j);
  sg_rp_result_clear(&r);
}

static void check_rp_stream(const uint8_t *data, size_t size) {
  char *out = NULL;
  sg_error_t *err = NULL;
  if (sg_rp_stream_parse((const char *)data, size, &out, &err) < 0) {
    if (out)
      abort();
    check_refusal(err);
    return;
  }
  if (err || !out || !is_json(out))
    abort();
  free(out);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The input up to its first NUL as a ping's job_id list. Sorted copies keep
 * the oracle at n log n: a quadratic one would bound the fuzzer's speed. */
static void check_rp_ids(const uint8_t *data, size_t size) {
  char *list = malloc(size + 1);
  if (!list)
    abort();
  memcpy(list, data, size);
  list[size] = '\0';
  char **ids = NULL;
  size_t n = sg_rp_ids_parse(list, &ids);
  if (n > SG_RP_IDS_MAX || (!n != !ids))
    abort();
  /* The list's entries, split in place of a copy, sorted. */
  char *copy = strdup(list);
  size_t n_entries = 1;
  for (const char *p = copy; *p; p++)
    n_entries += *p == ',';
  char **entries = malloc(n_entries * sizeof(char *));
  char **sorted = malloc((n ? n : 1) * sizeof(char *));
  if (!copy || !entries || !sorted)
    abort();
  size_t e = 0;
  for (char *p = copy, *comma;; p = comma + 1) {
    entries[e++] = p;
    if (!(comma = strchr(p, ',')))
      break;
    *comma = '\0';
  }
  qsort(entries, e, sizeof(char *), cmp_str);
  for (size_t i = 0; i < n; i++) {
    if (!sg_job_id_valid(ids[i]))
      abort();
    /* Each is a whole entry of the list. */
    if (!bsearch(&ids[i], entries, e, sizeof(char *), cmp_str))
      abort();
    sorted[i] = ids[i];
  }
  /* No two are the same. */
  qsort(sorted, n, sizeof(char *), cmp_str);
  for (size_t i = 1; i < n; i++)
    if (!strcmp(sorted[i - 1], sorted[i]))
      abort();
  free(sorted);
  free(entries);
  free(copy);
  sg_rp_ids_free(ids, n);
  free(list);
}

/* The input up to its first NUL as a query (crash-free whatever it is), and
 * as a value percent-encoded into one: it decodes to itself. */
static void check_rp_query(const uint8_t *data, size_t size) {
  size_t n = strnlen((const char *)data, size);
  char *text = malloc(n + 1);
  if (!text)
    abort();
  memcpy(text, data, n);
  text[n] = '\0';
  free(sg_rp_query_param(text, "job_id"));
  char *esc = curl_easy_escape(NULL, text, (int)n);
  if (!esc)
    abort();
  size_t qlen = strlen(esc) + 64;
  char *query = malloc(qlen);
  if (!query)
    abort();
  /* Malformed elements before it hide nothing. */
  snprintf(query, qlen, "gpu=none&flag&&=x&job_id=%s&runpod_version=1.12.0", esc);
  char *v = sg_rp_query_param(query, "job_id");
  if (!v || strcmp(v, text))
    abort();
  free(v);
  free(query);
  curl_free(esc);
  free(text);
}

/* One NUL-terminated line of the input, for the text parsers. */
static void check_line(const uint8_t *data, size_t size) {
  size_t n = 0;
  while (n < size && n < 256 && data[n] != '\n' && data[n] != '\0')
    n++;
  char line[257];
  memcpy(line, data, n);
  line[n] = '\0';
  sg_addr_rule_t rule;
  if (sg_addr_rule_parse(line, &rule, NULL) == 0 && !rule.public_any) {
    if ((rule.family != AF_INET && rule.family != AF_INET6) || rule.prefix < 0 ||
        rule.prefix > (rule.family == AF_INET ? 32 : 128))
      abort();
    struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6};
    struct sockaddr_in sa4 = {.sin_family = AF_INET};
    const struct sockaddr *sa = (const struct sockaddr *)&sa6;
    if (rule.family == AF_INET) {
      memcpy(&sa4.sin_addr, rule.addr, 4);
      sa = (const struct sockaddr *)&sa4;
    } else {
      memcpy(&sa6.sin6_addr, rule.addr, 16);
    }
    /* A rule admits its own address. */
    if (!sg_addr_allowed(&rule, 1, sa))
      abort();
    sg_addr_is_public(sa);
  }
  bool valid = n >= 1 && n <= SG_JOB_ID_MAX;
  for (size_t i = 0; i < n && valid; i++)
    valid = (line[i] >= 'a' && line[i] <= 'z') || (line[i] >= 'A' && line[i] <= 'Z') ||
            (line[i] >= '0' && line[i] <= '9') || line[i] == '-' || line[i] == '_';
  if (sg_job_id_valid(line) != valid)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The limit varies with the input so that the size check is reached. */
  size_t max_input = size > 0 ? (size_t)data[0] * 64 : 1024;
  sg_job_submit_t s;
  sg_error_t *err = NULL;
  if (sg_job_submit_parse((const char *)data, size, max_input, &s, &err) < 0) {
    if (!err || !err->message || s.input || s.webhook)
      abort();
    if (err->status != SG_EJSON && err->status != SG_EINVAL && err->status != SG_ETOOLARGE)
      abort();
    if (err->status == SG_EINVAL && !err->field)
      abort();
    sg_error_free(err);
  } else {
    if (err)
      abort();
    check_submit(&s, max_input);
    sg_job_submit_clear(&s);
  }
  check_result(200, data, size);
  check_result(size > 1 ? 100 + data[1] * 2 : 500, data, size);
  check_line(data, size);
  check_rp_result(data, size);
  check_rp_stream(data, size);
  check_rp_ids(data, size);
  check_rp_query(data, size);
  return 0;
}
