/* A client of the OCI distribution API (registry v2) over libcurl. Blocking:
 * it runs on pool threads only. Authentication follows the registry's
 * challenge: anonymous first; on 401, "Bearer realm=,service=,scope=" sends
 * us to a token server (with basic credentials when we have them), "Basic"
 * asks for the credentials directly. Credentials never appear in errors.
 *
 * Everything read from a registry is bounded: manifests, indexes and token
 * answers in memory (MAX_MANIFEST, MAX_TOKEN_BODY), blobs by the size their
 * descriptor gives (the transfer stops as soon as more arrives). Redirects are
 * followed here, not by libcurl: only to https or to the origin (scheme, host
 * and port) of the request, at most MAX_REDIRECTS times, and credentials
 * (basic or bearer) go only to the origin they were meant for, never across a
 * redirect to another one. Basic credentials never go to a plain-HTTP token
 * realm on another origin than the registry's. */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include "sgpu/image.h"
#include "sgpu/log.h"
#include "sgpu/json.h"
#include "sgpu/util.h"

#define MAX_MANIFEST SG_REGISTRY_MAX_CONFIG
#define MAX_TOKEN_BODY (1 << 20)
#define MAX_REDIRECTS 5
#define MAX_REDIRECT_BODY (64 << 10)

static atomic_bool aborting;

void sg_registry_abort_all(void) { atomic_store(&aborting, true); }

static int progress_cb(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
  return atomic_load(&aborting) ? 1 : 0;
}

static const char *const manifest_accept =
    "Accept: application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

typedef struct client {
  const sg_image_ref_t *ref;
  const sg_registry_opts_t *o;
  char *bearer; /* token from the token server */
  bool basic;   /* the registry asked for basic auth */
  bool reused;  /* bearer came from an earlier request of the session */
  bool head;    /* HEAD instead of GET */
} client_t;

void sg_registry_session_clear(sg_registry_session_t *s) {
  if (s->bearer) {
    explicit_bzero(s->bearer, strlen(s->bearer));
    free(s->bearer);
  }
  s->bearer = NULL;
  s->basic = false;
}

/* A client starting from what the session knows. */
static client_t client_open(const sg_image_ref_t *ref, const sg_registry_opts_t *o) {
  client_t c = {ref, o, NULL, false, false, false};
  if (o->session) {
    c.bearer = steal_pointer(&o->session->bearer);
    c.basic = o->session->basic;
    c.reused = c.bearer != NULL;
  }
  return c;
}

/* Hands what c learnt back to the session (or forgets it). */
static void client_close(client_t *c) {
  if (c->o->session) {
    sg_registry_session_clear(c->o->session);
    c->o->session->bearer = steal_pointer(&c->bearer);
    c->o->session->basic = c->basic;
  }
  if (c->bearer)
    explicit_bzero(c->bearer, strlen(c->bearer));
  free(c->bearer);
  c->bearer = NULL;
}

typedef struct response {
  long status;
  char *challenge; /* WWW-Authenticate */
  char *content_type;
  char *digest; /* Docker-Content-Digest */
  /* body into memory (limit) or into a file with a running sha256 */
  char *body;
  size_t len, limit;
  FILE *file;
  EVP_MD_CTX *sha;
  int64_t written, max_write;
  bool overflow;
  long hop_status;      /* status line of the response being received */
  size_t hop_discarded; /* body bytes of a redirect, dropped */
} response_t;

static void response_reset_headers(response_t *r) {
  free(r->challenge);
  free(r->content_type);
  free(r->digest);
  r->challenge = r->content_type = r->digest = NULL;
}

static void response_clear(response_t *r) {
  response_reset_headers(r);
  free(r->body);
  r->body = NULL;
  r->len = 0;
}

static size_t header_cb(char *buf, size_t size, size_t n, void *ud) {
  response_t *r = ud;
  size_t len = size * n;
  if (len >= 5 && !strncmp(buf, "HTTP/", 5)) {
    response_reset_headers(r); /* a new response (after a redirect or 100) */
    const char *sp = memchr(buf, ' ', len);
    r->hop_status = sp && (size_t)(sp - buf) + 4 <= len ? strtol(sp + 1, NULL, 10) : 0;
    return len;
  }
  char *colon = memchr(buf, ':', len);
  if (!colon)
    return len;
  size_t klen = (size_t)(colon - buf);
  const char *v = colon + 1;
  size_t vlen = len - klen - 1;
  while (vlen && (*v == ' ' || *v == '\t'))
    v++, vlen--;
  while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
    vlen--;
  char **slot = NULL;
  if (klen == 16 && !strncasecmp(buf, "WWW-Authenticate", 16))
    slot = &r->challenge;
  else if (klen == 12 && !strncasecmp(buf, "Content-Type", 12))
    slot = &r->content_type;
  else if (klen == 21 && !strncasecmp(buf, "Docker-Content-Digest", 21))
    slot = &r->digest;
  if (slot) {
    free(*slot);
    *slot = xstrndup(v, vlen);
  }
  return len;
}

static size_t write_cb(char *buf, size_t size, size_t n, void *ud) {
  response_t *r = ud;
  size_t len = size * n;
  if (r->hop_status >= 300 && r->hop_status < 400) {
    r->hop_discarded += len;
    return r->hop_discarded > MAX_REDIRECT_BODY ? 0 : len;
  }
  if (r->file) {
    if (r->max_write >= 0 && r->written + (int64_t)len > r->max_write) {
      r->overflow = true;
      return 0;
    }
    if (fwrite(buf, 1, len, r->file) != len)
      return 0;
    EVP_DigestUpdate(r->sha, buf, len);
    r->written += (int64_t)len;
    return len;
  }
  if (r->len + len > r->limit) {
    r->overflow = true;
    return 0;
  }
  r->body = xrealloc(r->body, r->len + len + 1);
  memcpy(r->body + r->len, buf, len);
  r->len += len;
  r->body[r->len] = '\0';
  return len;
}

/* "scheme://host:port" of url, lowercase, the port explicit; NULL when url
 * does not parse. Caller frees. */
static char *origin_of(const char *url) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
  if (u && !curl_url_set(u, CURLUPART_URL, url, 0) && !curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) &&
      !curl_url_get(u, CURLUPART_HOST, &host, 0) && !curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT)) {
    out = xasprintf("%s://%s:%s", scheme, host, port);
    for (char *p = out; *p; p++)
      *p = (char)tolower((unsigned char)*p);
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return out;
}

static bool is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* One request, without following redirects; *location (caller frees) gets
 * the absolute target of a redirect answer, else NULL. hdrs and, when
 * send_basic, the basic credentials go with it. */
static CURLcode perform(client_t *c, const char *url, struct curl_slist *hdrs, bool send_basic, response_t *r,
                        char *errbuf, char **location) {
  CURL *h = curl_easy_init();
  if (!h)
    return CURLE_OUT_OF_MEMORY;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "https");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)(c->o->timeout_s > 0 ? c->o->timeout_s : 60));
  curl_easy_setopt(h, CURLOPT_USERAGENT, "sgpu/0.1");
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb);
  if (c->head)
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  if (send_basic && c->o->auth) {
    curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(h, CURLOPT_USERNAME, c->o->auth->username);
    curl_easy_setopt(h, CURLOPT_PASSWORD, c->o->auth->password);
  }
  r->hop_status = 0;
  r->hop_discarded = 0;
  CURLcode rc = curl_easy_perform(h);
  r->status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
  char *loc = NULL;
  *location = NULL;
  if (rc == CURLE_OK && is_redirect(r->status) && curl_easy_getinfo(h, CURLINFO_REDIRECT_URL, &loc) == CURLE_OK && loc)
    *location = xstrdup(loc);
  curl_easy_cleanup(h);
  return rc;
}

/* One GET, following redirects to https or within url's origin. authz and
 * basic credentials go only to url's origin. Returns 0 with r->status set,
 * or a negative error for transport failures and refused redirects. */
static int get(client_t *c, const char *url, const char *accept, const char *authz, bool send_basic, response_t *r,
               sg_error_t **err) {
  cleanup_free char *origin = origin_of(url);
  if (!origin)
    return sg_make_error(err, EINVAL, "registry %s: cannot parse a URL to fetch", c->ref->domain);
  cleanup_free char *cur = xstrdup(url);
  for (int hop = 0;; hop++) {
    cleanup_free char *cur_origin = origin_of(cur);
    bool home = cur_origin && !strcmp(cur_origin, origin);
    struct curl_slist *hdrs = NULL;
    if (accept)
      hdrs = curl_slist_append(hdrs, accept);
    if (authz && home)
      hdrs = curl_slist_append(hdrs, authz);
    char errbuf[CURL_ERROR_SIZE] = "";
    char *next = NULL;
    CURLcode rc = perform(c, cur, hdrs, send_basic && home, r, errbuf, &next);
    curl_slist_free_all(hdrs);
    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && r->overflow)) {
      free(next);
      if (rc == CURLE_WRITE_ERROR && r->hop_discarded > MAX_REDIRECT_BODY)
        return sg_make_error(err, EFBIG, "registry %s: a redirect's body is over %d bytes", c->ref->domain,
                             MAX_REDIRECT_BODY);
      return sg_make_error(err, EIO, "registry %s: %s", c->ref->domain, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
    if (!next)
      return 0;
    cleanup_free char *location = next;
    cleanup_free char *next_origin = origin_of(location);
    if (hop >= MAX_REDIRECTS)
      return sg_make_error(err, ELOOP, "registry %s: more than %d redirects", c->ref->domain, MAX_REDIRECTS);
    if (!next_origin || !(sg_str_has_prefix(next_origin, "https://") || !strcmp(next_origin, origin)))
      return sg_make_error(err, EACCES,
                           "registry %s redirected to %s, plain HTTP on another host: refused (redirects are "
                           "followed only to https or within the same scheme, host and port)",
                           c->ref->domain, next_origin ? next_origin : "an unparsable URL");
    free(cur);
    cur = steal_pointer(&location);
  }
}

/* Reads param="value" (or param=value) from a challenge. Caller frees. */
static char *challenge_param(const char *ch, const char *name) {
  size_t n = strlen(name);
  for (const char *p = ch; *p; p++) {
    if ((p == ch || p[-1] == ' ' || p[-1] == ',') && !strncasecmp(p, name, n) && p[n] == '=') {
      const char *v = p + n + 1;
      if (*v == '"') {
        const char *e = strchr(v + 1, '"');
        return e ? xstrndup(v + 1, (size_t)(e - v - 1)) : NULL;
      }
      return xstrndup(v, strcspn(v, ", "));
    }
  }
  return NULL;
}

static char *url_escape(const char *s) {
  char *e = curl_easy_escape(NULL, s, 0);
  char *out = xstrdup(e ? e : "");
  curl_free(e);
  return out;
}

static char *base_url(const client_t *c);

/* Answers a challenge: gets a bearer token or switches to basic auth. */
static int authenticate(client_t *c, const char *challenge, sg_error_t **err) {
  if (!strncasecmp(challenge, "Basic", 5)) {
    if (!c->o->auth)
      return sg_make_error(err, EACCES, "registry %s requires credentials for %s (set registry_auth)", c->ref->domain,
                           c->ref->repository);
    if (c->basic)
      return sg_make_error(err, EACCES, "registry %s refused the credentials for %s (HTTP 401 unauthorized)",
                           c->ref->domain, c->ref->repository);
    c->basic = true;
    return 0;
  }
  if (strncasecmp(challenge, "Bearer", 6))
    return sg_make_error(err, EACCES, "registry %s: unsupported authentication scheme", c->ref->domain);
  if (c->bearer && !c->reused)
    return sg_make_error(err, EACCES, "registry %s refused access to %s (HTTP 401 unauthorized)%s", c->ref->domain,
                         c->ref->repository, c->o->auth ? "" : "; it may need credentials (registry_auth)");
  /* A token from an earlier request that no longer works: ask for a new one. */
  free(c->bearer);
  c->bearer = NULL;
  c->reused = false;
  cleanup_free char *realm = challenge_param(challenge, "realm");
  cleanup_free char *service = challenge_param(challenge, "service");
  cleanup_free char *scope = challenge_param(challenge, "scope");
  if (!realm || !(sg_str_has_prefix(realm, "https://") || sg_str_has_prefix(realm, "http://")))
    return sg_make_error(err, EACCES, "registry %s: bearer challenge without a usable realm", c->ref->domain);
  cleanup_free char *base = base_url(c);
  cleanup_free char *registry_origin = origin_of(base);
  cleanup_free char *realm_origin = origin_of(realm);
  if (!realm_origin || !registry_origin)
    return sg_make_error(err, EACCES, "registry %s: bearer challenge without a usable realm", c->ref->domain);
  if (c->o->auth && sg_str_has_prefix(realm_origin, "http://") && strcmp(realm_origin, registry_origin))
    return sg_make_error(err, EACCES,
                         "registry %s: its token realm %s is plain HTTP on another host; credentials are never sent "
                         "there: refused",
                         c->ref->domain, realm_origin);
  cleanup_free char *esvc = service ? url_escape(service) : NULL;
  cleanup_free char *default_scope = xasprintf("repository:%s:pull", c->ref->repository);
  cleanup_free char *escope = url_escape(scope ? scope : default_scope);
  cleanup_free char *url = xasprintf("%s%sscope=%s%s%s", realm, strchr(realm, '?') ? "&" : "?", escope,
                                     esvc ? "&service=" : "", esvc ? esvc : "");
  response_t r = {.limit = MAX_TOKEN_BODY};
  if (get(c, url, "Accept: application/json", NULL, c->o->auth != NULL, &r, err) < 0) {
    response_clear(&r);
    return -EIO;
  }
  if (r.status == 401 || r.status == 403) {
    response_clear(&r);
    return sg_make_error(err, EACCES, "registry %s: the token server refused the %s for %s (HTTP %ld)", c->ref->domain,
                         c->o->auth ? "credentials" : "anonymous request", c->ref->repository, r.status);
  }
  json_t *j = r.status == 200 && r.body ? json_loads(r.body, 0, NULL) : NULL;
  long st = r.status;
  response_clear(&r);
  const char *tok = j ? json_string_value(json_object_get(j, "token")) : NULL;
  if (!tok && j)
    tok = json_string_value(json_object_get(j, "access_token"));
  if (!tok) {
    json_decref(j);
    return sg_make_error(err, EACCES, "registry %s: the token server answered HTTP %ld without a token", c->ref->domain,
                         st);
  }
  c->bearer = xasprintf("Authorization: Bearer %s", tok);
  json_decref(j);
  return 0;
}

/* GET with the challenge flow: at most two challenges are answered. */
static int get_authed(client_t *c, const char *url, const char *accept, response_t *r, sg_error_t **err) {
  for (int attempt = 0;; attempt++) {
    if (get(c, url, accept, c->bearer, c->basic, r, err) < 0)
      return -EIO;
    if (r->status != 401 || attempt == 2)
      break;
    if (!r->challenge)
      return sg_make_error(err, EACCES, "registry %s answered 401 without a challenge", c->ref->domain);
    cleanup_free char *ch = xstrdup(r->challenge);
    response_clear(r);
    if (r->file) {
      rewind(r->file);
      if (ftruncate(fileno(r->file), 0) < 0)
        return sg_make_error(err, errno, "truncate: %s", strerror(errno));
      EVP_DigestInit_ex(r->sha, EVP_sha256(), NULL);
      r->written = 0;
    }
    r->overflow = false;
    if (authenticate(c, ch, err) < 0)
      return -EACCES;
  }
  if (r->status == 401)
    return sg_make_error(err, EACCES, "registry %s refused access to %s (HTTP 401 unauthorized)", c->ref->domain,
                         c->ref->repository);
  return 0;
}

static char *base_url(const client_t *c) {
  return xasprintf("%s://%s/v2/%s", c->o->insecure ? "http" : "https", sg_image_ref_api_host(c->ref),
                   c->ref->repository);
}

static void sha256_hex(const void *data, size_t len, char out[72]) {
  unsigned char md[32];
  unsigned int n = 0;
  EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
  strcpy(out, "sha256:");
  for (int i = 0; i < 32; i++)
    snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

static bool is_index(const char *mt) {
  return mt && (!strcmp(mt, "application/vnd.oci.image.index.v1+json") ||
                !strcmp(mt, "application/vnd.docker.distribution.manifest.list.v2+json"));
}

static bool is_manifest(const char *mt) {
  return mt && (!strcmp(mt, "application/vnd.oci.image.manifest.v1+json") ||
                !strcmp(mt, "application/vnd.docker.distribution.manifest.v2+json"));
}

/* Fetches one manifest by tag or digest into r (status 200, body bounded by
 * MAX_MANIFEST); verifies a digest reference. */
static int fetch_manifest(client_t *c, const char *reference, bool by_digest, response_t *r, sg_error_t **err) {
  cleanup_free char *base = base_url(c);
  cleanup_free char *url = xasprintf("%s/manifests/%s", base, reference);
  *r = (response_t){.limit = MAX_MANIFEST};
  if (get_authed(c, url, manifest_accept, r, err) < 0)
    return -EIO;
  if (r->overflow)
    return sg_make_error(err, EFBIG, "registry %s: manifest of %s is over %d bytes", c->ref->domain, c->ref->repository,
                         MAX_MANIFEST);
  if (r->status == 404)
    return sg_make_error(err, ENOENT, "image %s/%s:%s not found in the registry (HTTP 404)", c->ref->domain,
                         c->ref->repository, reference);
  if (r->status != 200)
    return sg_make_error(err, EIO, "registry %s: manifest %s answered HTTP %ld", c->ref->domain, reference, r->status);
  char digest[72];
  sha256_hex(r->body ? r->body : "", r->len, digest);
  if (by_digest && strcmp(digest, reference))
    return sg_make_error(err, EBADMSG, "registry %s: manifest %s does not match its digest", c->ref->domain, reference);
  return 0;
}

void sg_manifest_clear(sg_manifest_t *m) {
  free(m->digest);
  free(m->config_digest);
  for (size_t i = 0; i < m->n_layers; i++) {
    free(m->layers[i].digest);
    free(m->layers[i].media_type);
  }
  free(m->layers);
  memset(m, 0, sizeof(*m));
}

static bool layer_type_ok(const char *mt) {
  return mt && (sg_str_has_prefix(mt, "application/vnd.oci.image.layer.v1.tar") ||
                sg_str_has_prefix(mt, "application/vnd.docker.image.rootfs.diff.tar"));
}

int sg_manifest_parse(const char *body, size_t len, const char *content_type, const char *name, sg_manifest_t *out,
                      char **index_pick, sg_error_t **err) {
  memset(out, 0, sizeof(*out));
  *index_pick = NULL;
  if (len > SG_REGISTRY_MAX_CONFIG)
    return sg_make_error(err, EFBIG, "image %s: manifest is over %d bytes", name, SG_REGISTRY_MAX_CONFIG);
  json_error_t jerr;
  cleanup_json json_t *j = json_loadb(body, len, 0, &jerr);
  if (!json_is_object(j))
    return sg_make_error(err, EBADMSG, "image %s: manifest is not a JSON object", name);
  /* The media type: the body's field, else the Content-Type. */
  const char *mt = json_string_value(json_object_get(j, "mediaType"));
  cleanup_free char *ct = content_type ? xstrndup(content_type, strcspn(content_type, "; ")) : NULL;
  if (!mt)
    mt = ct;
  if (is_index(mt)) {
    json_t *list = json_object_get(j, "manifests"), *m;
    size_t i;
    json_array_foreach(list, i, m) {
      json_t *p = json_object_get(m, "platform");
      const char *os = json_string_value(json_object_get(p, "os"));
      const char *arch = json_string_value(json_object_get(p, "architecture"));
      const char *d = json_string_value(json_object_get(m, "digest"));
      if (os && arch && d && !strcmp(os, "linux") && !strcmp(arch, "amd64") && sg_digest_valid(d)) {
        *index_pick = xstrdup(d);
        return 1;
      }
    }
    return sg_make_error(err, ENOENT, "image %s has no linux/amd64 manifest", name);
  }
  if (!is_manifest(mt))
    return sg_make_error(err, EBADMSG, "image %s: unsupported manifest type %s (OCI or Docker v2 schema 2 expected)",
                         name, mt ? mt : "(none)");
  const char *cfg = json_string_value(json_object_get(json_object_get(j, "config"), "digest"));
  json_t *cfg_size = json_object_get(json_object_get(j, "config"), "size");
  json_t *layers = json_object_get(j, "layers");
  if (!cfg || !sg_digest_valid(cfg) || !json_is_integer(cfg_size) || json_integer_value(cfg_size) < 0 ||
      !json_is_array(layers) || json_array_size(layers) > 1000)
    return sg_make_error(err, EBADMSG, "image %s: manifest without a valid config or layers", name);
  if (json_integer_value(cfg_size) > SG_REGISTRY_MAX_CONFIG)
    return sg_make_error(err, EFBIG, "image %s: its config blob has %lld bytes, over the bound of %d: refused", name,
                         (long long)json_integer_value(cfg_size), SG_REGISTRY_MAX_CONFIG);
  char digest[72];
  sha256_hex(body, len, digest);
  out->digest = xstrdup(digest);
  out->config_digest = xstrdup(cfg);
  out->config_size = json_integer_value(cfg_size);
  out->layers = xcalloc(json_array_size(layers) + 1, sizeof(sg_layer_desc_t));
  json_t *l;
  size_t i;
  json_array_foreach(layers, i, l) {
    const char *d = json_string_value(json_object_get(l, "digest"));
    const char *lmt = json_string_value(json_object_get(l, "mediaType"));
    json_t *sz = json_object_get(l, "size");
    if (!d || !sg_digest_valid(d) || !json_is_integer(sz) || json_integer_value(sz) < 0 || !layer_type_ok(lmt)) {
      sg_manifest_clear(out);
      return sg_make_error(err, EBADMSG, "image %s: layer %zu is invalid or of an unsupported type", name, i);
    }
    out->layers[out->n_layers].digest = xstrdup(d);
    out->layers[out->n_layers].media_type = xstrdup(lmt);
    out->layers[out->n_layers].size = json_integer_value(sz);
    out->n_layers++;
  }
  return 0;
}

int sg_registry_manifest(const sg_image_ref_t *ref, const sg_registry_opts_t *o, sg_manifest_t *out, sg_error_t **err) {
  memset(out, 0, sizeof(*out));
  client_t c = client_open(ref, o);
  cleanup_free char *name = xasprintf("%s/%s", ref->domain, ref->repository);
  cleanup_free char *pick = NULL;
  response_t r;
  int ret = fetch_manifest(&c, ref->digest ? ref->digest : ref->tag, ref->digest != NULL, &r, err);
  if (ret == 0)
    ret = sg_manifest_parse(r.body ? r.body : "", r.len, r.content_type, name, out, &pick, err);
  response_clear(&r);
  if (ret == 1) {
    /* An index: its linux/amd64 manifest, by digest. */
    ret = fetch_manifest(&c, pick, true, &r, err);
    cleanup_free char *again = NULL;
    if (ret == 0)
      ret = sg_manifest_parse(r.body ? r.body : "", r.len, r.content_type, name, out, &again, err);
    response_clear(&r);
    if (ret == 1) {
      sg_manifest_clear(out);
      ret = sg_make_error(err, EBADMSG, "image %s: its index names another index for linux/amd64", name);
    }
  }
  client_close(&c);
  return ret < 0 ? ret : 0;
}

int sg_registry_head_digest(const sg_image_ref_t *ref, const sg_registry_opts_t *o, char **digest, sg_error_t **err) {
  *digest = NULL;
  if (!ref->tag)
    return sg_make_error(err, EINVAL, "image %s/%s names no tag", ref->domain, ref->repository);
  client_t c = client_open(ref, o);
  c.head = true;
  cleanup_free char *base = base_url(&c);
  cleanup_free char *url = xasprintf("%s/manifests/%s", base, ref->tag);
  response_t r = {.limit = MAX_MANIFEST};
  int ret = get_authed(&c, url, manifest_accept, &r, err);
  if (ret == 0 && r.status != 200)
    ret = sg_make_error(err, r.status == 404 ? ENOENT : EIO, "registry %s: manifest %s/%s:%s answered HTTP %ld",
                        ref->domain, ref->domain, ref->repository, ref->tag, r.status);
  if (ret == 0 && !(r.digest && sg_digest_valid(r.digest)))
    ret = sg_make_error(err, EBADMSG, "registry %s: no Docker-Content-Digest for %s:%s", ref->domain, ref->repository,
                        ref->tag);
  if (ret == 0)
    *digest = xstrdup(r.digest);
  response_clear(&r);
  client_close(&c);
  return ret;
}

int sg_registry_blob(const sg_image_ref_t *ref, const sg_registry_opts_t *o, const char *digest, int64_t size,
                     const char *path, sg_error_t **err) {
  if (size < 0)
    return sg_make_error(err, EINVAL, "registry %s: blob %s has no size to bound its download", ref->domain, digest);
  client_t c = client_open(ref, o);
  cleanup_free char *partial = xasprintf("%s.partial", path);
  int fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return sg_make_error(err, errno, "cannot create %s: %s", partial, strerror(errno));
  response_t r = {.file = fdopen(fd, "wb"), .sha = EVP_MD_CTX_new(), .max_write = size};
  EVP_DigestInit_ex(r.sha, EVP_sha256(), NULL);
  cleanup_free char *base = base_url(&c);
  cleanup_free char *url = xasprintf("%s/blobs/%s", base, digest);
  int ret = get_authed(&c, url, NULL, &r, err);
  if (fflush(r.file) != 0 && ret == 0)
    ret = sg_make_error(err, errno, "cannot write %s: %s", partial, strerror(errno));
  if (ret == 0 && r.status != 200)
    ret = sg_make_error(err, r.status == 404 ? ENOENT : EIO, "registry %s: blob %s answered HTTP %ld", ref->domain,
                        digest, r.status);
  if (ret == 0 && r.overflow)
    ret = sg_make_error(err, EBADMSG, "registry %s: blob %s is larger than the %lld bytes its descriptor says: refused",
                        ref->domain, digest, (long long)size);
  if (ret == 0 && r.written != size)
    ret = sg_make_error(err, EBADMSG, "registry %s: blob %s has %lld bytes, the manifest says %lld", ref->domain,
                        digest, (long long)r.written, (long long)size);
  if (ret == 0) {
    unsigned char md[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(r.sha, md, &n);
    char got[72] = "sha256:";
    for (int i = 0; i < 32; i++)
      snprintf(got + 7 + 2 * i, 3, "%02x", md[i]);
    if (strcmp(got, digest))
      ret = sg_make_error(err, EBADMSG, "digest mismatch for blob %s of %s/%s (got %s): refused", digest, ref->domain,
                          ref->repository, got);
  }
  if (ret == 0 && fsync(fileno(r.file)) < 0)
    ret = sg_make_error(err, errno, "cannot write %s: %s", partial, strerror(errno));
  fclose(r.file);
  EVP_MD_CTX_free(r.sha);
  response_clear(&r);
  client_close(&c);
  if (ret == 0 && rename(partial, path) < 0)
    ret = sg_make_error(err, errno, "cannot rename %s: %s", partial, strerror(errno));
  if (ret < 0)
    unlink(partial);
  return ret;
}
