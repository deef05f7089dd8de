/* The pure parts of the job API. See jobs-proto.h. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <strings.h>

#include "gateway/jobs-proto.h"
#include "sgpu/spec.h"
#include "sgpu/util.h"

static int get_ms(json_t *policy, const char *key, int64_t *out, sg_error_t **err) {
  json_t *v = json_object_get(policy, key);
  *out = 0;
  if (!v || json_is_null(v))
    return 0;
  cleanup_free char *f = xasprintf("policy.%s", key);
  if (!json_is_integer(v) || json_integer_value(v) < SG_JOB_TIMEOUT_MIN_MS ||
      json_integer_value(v) > SG_JOB_TIMEOUT_MAX_MS)
    return sg_make_field_error(err, f, "must be an integer number of milliseconds between %d and %lld",
                               SG_JOB_TIMEOUT_MIN_MS, (long long)SG_JOB_TIMEOUT_MAX_MS);
  *out = json_integer_value(v);
  return 0;
}

int sg_job_submit_parse(const char *body, size_t len, size_t max_input, sg_job_submit_t *out, sg_error_t **err) {
  memset(out, 0, sizeof(*out));
  json_error_t jerr;
  cleanup_json json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
  if (!j)
    return sg_make_error(err, SG_EJSON, "body is not valid JSON: line %d, column %d: %s", jerr.line, jerr.column,
                         jerr.text);
  if (!json_is_object(j))
    return sg_make_error(err, SG_EJSON, "body must be a JSON object");
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    if (strcmp(key, "input") && strcmp(key, "webhook") && strcmp(key, "policy"))
      return sg_make_field_error(err, key, "is not a known field (input, webhook, policy)");
  }
  json_t *input = json_object_get(j, "input");
  if (!input)
    return sg_make_field_error(err, "input", "is required");
  char *text = json_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY);
  if (!text)
    return sg_make_field_error(err, "input", "cannot be encoded");
  size_t tlen = strlen(text);
  if (tlen > max_input) {
    free(text);
    return sg_make_error(err, SG_ETOOLARGE, "input is %zu bytes as JSON, over the endpoint's limit of %zu", tlen,
                         max_input);
  }
  out->input = text;
  out->input_len = tlen;
  json_t *wh = json_object_get(j, "webhook");
  if (wh && !json_is_null(wh)) {
    if (!json_is_string(wh) || strlen(json_string_value(wh)) != json_string_length(wh)) {
      sg_job_submit_clear(out);
      return sg_make_field_error(err, "webhook", "must be a URL string");
    }
    if (sg_webhook_url_check(json_string_value(wh), err) < 0) {
      sg_job_submit_clear(out);
      return -SG_EINVAL;
    }
    out->webhook = xstrdup(json_string_value(wh));
  }
  json_t *policy = json_object_get(j, "policy");
  if (policy && !json_is_null(policy)) {
    int r = 0;
    if (!json_is_object(policy))
      r = sg_make_field_error(err, "policy", "must be an object");
    json_object_foreach(policy, key, v) {
      if (r == 0 && strcmp(key, "executionTimeout") && strcmp(key, "ttl")) {
        cleanup_free char *f = xasprintf("policy.%s", key);
        r = sg_make_field_error(err, f, "is not a known field (executionTimeout, ttl)");
      }
    }
    if (r == 0)
      r = get_ms(policy, "executionTimeout", &out->exec_timeout_ms, err);
    if (r == 0)
      r = get_ms(policy, "ttl", &out->ttl_ms, err);
    if (r < 0) {
      sg_job_submit_clear(out);
      return r;
    }
  }
  return 0;
}

void sg_job_submit_clear(sg_job_submit_t *s) {
  free(s->input);
  free(s->webhook);
  memset(s, 0, sizeof(*s));
}

/* A JSON string of text (bytes that are not UTF-8 make it a placeholder). */
static char *json_string_text(const char *text, size_t len) {
  json_t *s = json_stringn(text, len);
  if (!s)
    s = json_string("(answer is not valid UTF-8)");
  char *out = json_dumps(s, JSON_ENCODE_ANY);
  json_decref(s);
  return out;
}

static char *dump(json_t *v) { return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY); }

void sg_job_result_parse(int http_status, const char *body, size_t len, sg_job_result_t *out) {
  memset(out, 0, sizeof(*out));
  if (http_status < 200 || http_status > 299) {
    size_t n = len > 512 ? 512 : len;
    cleanup_free char *msg = xasprintf("the worker answered HTTP %d: %.*s", http_status, (int)n, body ? body : "");
    out->status = SG_JOB_FAILED;
    out->error = json_string_text(msg, strlen(msg));
    return;
  }
  json_error_t jerr;
  cleanup_json json_t *j = len ? json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr) : NULL;
  if (!j) {
    out->status = SG_JOB_COMPLETED;
    out->output = len ? json_string_text(body, len) : xstrdup("null");
    return;
  }
  if (json_is_object(j)) {
    json_t *e = json_object_get(j, "error");
    if (e && !json_is_null(e) && !(json_is_string(e) && json_string_length(e) == 0)) {
      out->status = SG_JOB_FAILED;
      out->error = dump(e);
      return;
    }
    json_t *o = json_object_get(j, "output");
    if (o) {
      out->status = SG_JOB_COMPLETED;
      out->output = dump(o);
      return;
    }
  }
  out->status = SG_JOB_COMPLETED;
  out->output = dump(j);
}

void sg_job_result_clear(sg_job_result_t *r) {
  free(r->output);
  free(r->error);
  memset(r, 0, sizeof(*r));
}

bool sg_job_id_valid(const char *id) {
  size_t n = strlen(id);
  if (n < 1 || n > SG_JOB_ID_MAX)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = id[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
      return false;
  }
  return true;
}

char *sg_job_new_id(void) {
  unsigned char b[16];
  if (sg_random_bytes(b, sizeof(b)) < 0)
    abort();
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  return xasprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4],
                   b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int sg_webhook_url_check(const char *url, sg_error_t **err) {
  if (strlen(url) > SG_WEBHOOK_URL_MAX)
    return sg_make_field_error(err, "webhook", "must be at most %d bytes", SG_WEBHOOK_URL_MAX);
  for (const char *p = url; *p; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f)
      return sg_make_field_error(err, "webhook", "must not contain spaces or control characters");
  CURLU *u = curl_url();
  int r = 0;
  char *scheme = NULL, *host = NULL, *user = NULL, *password = NULL;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
    r = sg_make_field_error(err, "webhook", "is not a valid absolute URL");
    goto out;
  }
  curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
  curl_url_get(u, CURLUPART_HOST, &host, 0);
  curl_url_get(u, CURLUPART_USER, &user, 0);
  curl_url_get(u, CURLUPART_PASSWORD, &password, 0);
  if (!scheme || (strcasecmp(scheme, "http") && strcasecmp(scheme, "https")))
    r = sg_make_field_error(err, "webhook", "must be an http or https URL");
  else if (!host || !*host)
    r = sg_make_field_error(err, "webhook", "must name a host");
  else if (user || password)
    r = sg_make_field_error(err, "webhook", "must not hold a user name or password");
out:
  curl_free(scheme);
  curl_free(host);
  curl_free(user);
  curl_free(password);
  curl_url_cleanup(u);
  return r;
}

int sg_addr_rule_parse(const char *text, sg_addr_rule_t *out, sg_error_t **err) {
  memset(out, 0, sizeof(*out));
  if (!strcmp(text, "public")) {
    out->public_any = true;
    return 0;
  }
  char buf[64];
  if (strlen(text) >= sizeof(buf))
    return sg_make_error(err, SG_EINVAL, "webhook_allow: \"%s\" is not an address or network", text);
  snprintf(buf, sizeof(buf), "%s", text);
  char *slash = strchr(buf, '/');
  if (slash)
    *slash = '\0';
  if (inet_pton(AF_INET, buf, out->addr) == 1) {
    out->family = AF_INET;
    out->prefix = 32;
  } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
    out->family = AF_INET6;
    out->prefix = 128;
  } else {
    return sg_make_error(err, SG_EINVAL, "webhook_allow: \"%s\" is not \"public\", an address or a network", text);
  }
  if (slash) {
    char *end;
    long p = strtol(slash + 1, &end, 10);
    if (!slash[1] || *end || p < 0 || p > out->prefix)
      return sg_make_error(err, SG_EINVAL, "webhook_allow: bad prefix length in \"%s\"", text);
    out->prefix = (int)p;
  }
  /* An IPv4-mapped rule ("::ffff:10.0.0.1") is the IPv4 rule it names. */
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (out->family == AF_INET6 && out->prefix >= 96 && !memcmp(out->addr, mapped, 12)) {
    memmove(out->addr, out->addr + 12, 4);
    memset(out->addr + 4, 0, 12);
    out->family = AF_INET;
    out->prefix -= 96;
  }
  return 0;
}

static bool prefix_match(const unsigned char *a, const unsigned char *net, int bits) {
  int full = bits / 8, rest = bits % 8;
  if (memcmp(a, net, (size_t)full))
    return false;
  if (rest == 0)
    return true;
  unsigned char mask = (unsigned char)(0xff << (8 - rest));
  return (a[full] & mask) == (net[full] & mask);
}

static bool v4_public(const unsigned char *a) {
  static const struct {
    unsigned char net[4];
    int bits;
  } blocked[] = {
      {{0, 0, 0, 0}, 8},      {{10, 0, 0, 0}, 8},    {{100, 64, 0, 0}, 10},   {{127, 0, 0, 0}, 8},
      {{169, 254, 0, 0}, 16}, {{172, 16, 0, 0}, 12}, {{192, 0, 0, 0}, 24},    {{192, 0, 2, 0}, 24},
      {{192, 168, 0, 0}, 16}, {{198, 18, 0, 0}, 15}, {{198, 51, 100, 0}, 24}, {{203, 0, 113, 0}, 24},
      {{224, 0, 0, 0}, 4},    {{240, 0, 0, 0}, 4},
  };
  for (size_t i = 0; i < SG_ARRAY_SIZE(blocked); i++)
    if (prefix_match(a, blocked[i].net, blocked[i].bits))
      return false;
  return true;
}

bool sg_addr_is_public(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return v4_public((const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr);
  if (sa->sa_family != AF_INET6)
    return false;
  const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (!memcmp(a, mapped, 12) || !memcmp(a, nat64, 12))
    return v4_public(a + 12);
  /* Only global unicast (2000::/3) is public, less documentation and ORCHID-like blocks. */
  if ((a[0] & 0xe0) != 0x20)
    return false;
  static const unsigned char doc[4] = {0x20, 0x01, 0x0d, 0xb8};
  if (!memcmp(a, doc, 4))
    return false;
  return true;
}

bool sg_addr_allowed(const sg_addr_rule_t *rules, size_t n, const struct sockaddr *sa) {
  /* The address as IPv4 (also when IPv4-mapped) and as IPv6, where it is one. */
  const unsigned char *a4 = NULL, *a6 = NULL;
  if (sa->sa_family == AF_INET) {
    a4 = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
  } else if (sa->sa_family == AF_INET6) {
    a6 = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!memcmp(a6, mapped, 12))
      a4 = a6 + 12;
  } else {
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    if (rules[i].public_any) {
      if (sg_addr_is_public(sa))
        return true;
      continue;
    }
    const unsigned char *a = rules[i].family == AF_INET ? a4 : rules[i].family == AF_INET6 ? a6 : NULL;
    if (a && prefix_match(a, rules[i].addr, rules[i].prefix))
      return true;
  }
  return false;
}

/* ---- RunPod's worker protocol ---- */

static json_t *load_object(const char *body, size_t len, sg_error_t **err) {
  json_error_t jerr;
  json_t *j = len ? json_loadb(body, len, JSON_ALLOW_NUL, &jerr) : NULL;
  if (!j) {
    if (len)
      sg_make_error(err, SG_EJSON, "body is not valid JSON: line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    else
      sg_make_error(err, SG_EJSON, "body is empty: a JSON object is expected");
    return NULL;
  }
  if (!json_is_object(j)) {
    json_decref(j);
    sg_make_error(err, SG_EJSON, "body must be a JSON object");
    return NULL;
  }
  return j;
}

int sg_rp_result_parse(const char *body, size_t len, sg_rp_result_t *out, sg_error_t **err) {
  memset(out, 0, sizeof(*out));
  cleanup_json json_t *j = load_object(body, len, err);
  if (!j)
    return -SG_EJSON;
  json_t *stop = json_object_get(j, "stopPod");
  if (stop && !json_is_null(stop) && !json_is_boolean(stop))
    return sg_make_field_error(err, "stopPod", "must be a boolean");
  json_t *status = json_object_get(j, "status");
  if (status && !json_is_null(status)) {
    const char *s = json_is_string(status) ? json_string_value(status) : "";
    if (strcmp(s, "IN_PROGRESS") && strcmp(s, "COMPLETED") && strcmp(s, "FAILED"))
      return sg_make_field_error(err, "status", "must be IN_PROGRESS (progress), COMPLETED or FAILED");
    out->progress = !strcmp(s, "IN_PROGRESS");
  }
  out->stop_pod = json_is_true(stop);
  json_t *o = json_object_get(j, "output");
  if (o)
    out->output = dump(o);
  if (out->progress)
    return 0;
  json_t *e = json_object_get(j, "error");
  if (e && !json_is_null(e) && !(json_is_string(e) && json_string_length(e) == 0)) {
    out->status = SG_JOB_FAILED;
    out->error = dump(e);
  } else if (json_is_string(status) && !strcmp(json_string_value(status), "FAILED")) {
    /* The worker said the job failed: it does, with an error that says so. */
    out->status = SG_JOB_FAILED;
    out->error = xstrdup("\"the worker reported FAILED without an error\"");
  } else {
    out->status = SG_JOB_COMPLETED;
  }
  return 0;
}

void sg_rp_result_clear(sg_rp_result_t *r) {
  free(r->output);
  free(r->error);
  memset(r, 0, sizeof(*r));
}

int sg_rp_stream_parse(const char *body, size_t len, char **output, sg_error_t **err) {
  *output = NULL;
  cleanup_json json_t *j = load_object(body, len, err);
  if (!j)
    return -SG_EJSON;
  json_t *o = json_object_get(j, "output");
  if (!o)
    return sg_make_field_error(err, "output", "is required");
  *output = dump(o);
  return 0;
}

/* Slots of the set of ids kept so far: a power of two, at least twice
 * SG_RP_IDS_MAX, so that probing always ends at an empty one. */
#define IDS_SLOTS 2048
_Static_assert(IDS_SLOTS >= 2 * SG_RP_IDS_MAX && (IDS_SLOTS & (IDS_SLOTS - 1)) == 0, "IDS_SLOTS");

static uint32_t id_hash(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

size_t sg_rp_ids_parse(const char *list, char ***ids) {
  *ids = NULL;
  size_t n = 0, cap = 0;
  uint16_t slot[IDS_SLOTS] = {0}; /* 1 + the index in *ids; 0: empty */
  /* At most SG_RP_IDS_MAX entries are looked at, valid or not, so that a
   * long list of repeats costs no more than a full one. */
  size_t seen = 0;
  for (const char *p = list ? list : ""; *p && seen < SG_RP_IDS_MAX; seen++) {
    size_t len = strcspn(p, ",");
    cleanup_free char *id = xstrndup(p, len);
    p += len;
    if (*p == ',')
      p++;
    if (!sg_job_id_valid(id))
      continue;
    size_t i = id_hash(id) & (IDS_SLOTS - 1);
    while (slot[i] && strcmp((*ids)[slot[i] - 1], id))
      i = (i + 1) & (IDS_SLOTS - 1);
    if (slot[i])
      continue; /* a repeat */
    if (n == cap) {
      cap = cap ? 2 * cap : 8;
      *ids = xrealloc(*ids, cap * sizeof(char *));
    }
    (*ids)[n++] = steal_pointer(&id);
    slot[i] = (uint16_t)n;
  }
  return n;
}

void sg_rp_ids_free(char **ids, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(ids[i]);
  free(ids);
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Decodes n bytes of a query value: "+" is a space, "%XX" a byte, a broken
 * escape stays as it is. The result ends at its first NUL, if any. */
static char *query_decode(const char *v, size_t n) {
  char *out = xmalloc(n + 1), *o = out;
  for (size_t i = 0; i < n; i++) {
    int hi = i + 2 < n ? hex_value(v[i + 1]) : -1;
    int lo = i + 2 < n ? hex_value(v[i + 2]) : -1;
    if (v[i] == '+') {
      *o++ = ' ';
    } else if (v[i] == '%' && hi >= 0 && lo >= 0) {
      *o++ = (char)(hi * 16 + lo);
      i += 2;
    } else {
      *o++ = v[i];
    }
  }
  *o = '\0';
  return out;
}

char *sg_rp_query_param(const char *query, const char *name) {
  size_t nlen = strlen(name);
  for (const char *p = query ? query : ""; *p;) {
    size_t len = strcspn(p, "&");
    const char *eq = memchr(p, '=', len);
    /* Elements without "=" or with another name are passed over. */
    if (eq && (size_t)(eq - p) == nlen && nlen && !memcmp(p, name, nlen))
      return query_decode(eq + 1, len - nlen - 1);
    p += len;
    if (*p == '&')
      p++;
  }
  return NULL;
}
