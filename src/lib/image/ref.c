/* Image references, parsed and normalized as Docker does
 * (github.com/distribution/reference): an optional registry domain, a
 * repository path of lowercase components, an optional tag and an optional
 * sha256 digest; "name" alone means docker.io/library/name:latest. */
#include <ctype.h>

#include "sgpu/image.h"
#include "sgpu/util.h"

#define MAX_NAME 255
#define MAX_TAG 128

bool sg_digest_valid(const char *s) {
  if (!sg_str_has_prefix(s, "sha256:") || strlen(s) != 7 + 64)
    return false;
  for (const char *p = s + 7; *p; p++)
    if (!(isdigit((unsigned char)*p) || (*p >= 'a' && *p <= 'f')))
      return false;
  return true;
}

static bool alnum_lower(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

/* path-component: [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)* */
static bool component_valid(const char *s, size_t n) {
  if (n == 0 || !alnum_lower(s[0]) || !alnum_lower(s[n - 1]))
    return false;
  for (size_t i = 0; i < n;) {
    if (alnum_lower(s[i])) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < n && !alnum_lower(s[j]))
      j++;
    size_t len = j - i;
    const char *sep = s + i;
    bool ok = (len == 1 && (*sep == '.' || *sep == '_' || *sep == '-')) || (len == 2 && sep[0] == '_' && sep[1] == '_');
    if (!ok) {
      ok = true;
      for (size_t k = 0; k < len; k++)
        ok &= sep[k] == '-';
    }
    if (!ok)
      return false;
    i = j;
  }
  return true;
}

/* host (label(.label)*) with an optional :port */
static bool domain_valid(const char *s, size_t n) {
  const char *colon = memchr(s, ':', n);
  size_t host_len = colon ? (size_t)(colon - s) : n;
  if (colon) {
    size_t plen = n - host_len - 1;
    if (plen == 0 || plen > 5)
      return false;
    for (size_t i = 0; i < plen; i++)
      if (!isdigit((unsigned char)colon[1 + i]))
        return false;
  }
  if (host_len == 0)
    return false;
  size_t label = 0;
  for (size_t i = 0; i < host_len; i++) {
    char c = s[i];
    if (c == '.') {
      if (label == 0 || s[i - 1] == '-')
        return false;
      label = 0;
      continue;
    }
    if (!(isalnum((unsigned char)c) || c == '-') || (label == 0 && c == '-'))
      return false;
    label++;
  }
  return label > 0 && s[host_len - 1] != '-';
}

static bool tag_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MAX_TAG || !(isalnum((unsigned char)s[0]) || s[0] == '_'))
    return false;
  for (size_t i = 1; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-'))
      return false;
  return true;
}

void sg_image_ref_clear(sg_image_ref_t *r) {
  free(r->domain);
  free(r->repository);
  free(r->tag);
  free(r->digest);
  memset(r, 0, sizeof(*r));
}

int sg_image_ref_parse(const char *s, sg_image_ref_t *r, sg_error_t **err) {
  memset(r, 0, sizeof(*r));
  if (!s || !*s)
    return sg_make_error(err, SG_EINVAL, "image reference is empty");
  for (const char *p = s; *p; p++)
    if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
      return sg_make_error(err, SG_EINVAL, "image reference \"%s\" contains spaces or control characters", s);
  cleanup_free char *copy = xstrdup(s);
  char *at = strchr(copy, '@');
  if (at) {
    *at = '\0';
    if (!sg_digest_valid(at + 1))
      return sg_make_error(err, SG_EINVAL, "image reference \"%s\": digest must be sha256: and 64 lowercase hex digits",
                           s);
    r->digest = xstrdup(at + 1);
  }
  char *name = copy;
  char *slash = strrchr(name, '/');
  char *colon = strrchr(slash ? slash : name, ':');
  if (colon) {
    *colon = '\0';
    if (!tag_valid(colon + 1)) {
      sg_image_ref_clear(r);
      return sg_make_error(err, SG_EINVAL, "image reference \"%s\": invalid tag \"%s\" (up to 128 of [A-Za-z0-9_.-])",
                           s, colon + 1);
    }
    r->tag = xstrdup(colon + 1);
  }
  if (!*name || strlen(name) > MAX_NAME) {
    sg_image_ref_clear(r);
    return sg_make_error(err, SG_EINVAL, "image reference \"%s\": the name must be 1 to %d characters", s, MAX_NAME);
  }
  /* The first component is a registry when it looks like a host. */
  char *first_slash = strchr(name, '/');
  const char *path = name;
  if (first_slash) {
    size_t dlen = (size_t)(first_slash - name);
    bool is_domain =
        memchr(name, '.', dlen) || memchr(name, ':', dlen) || (dlen == 9 && !strncmp(name, "localhost", 9));
    for (size_t i = 0; i < dlen && !is_domain; i++)
      is_domain = isupper((unsigned char)name[i]);
    if (is_domain) {
      if (!domain_valid(name, dlen)) {
        sg_image_ref_clear(r);
        return sg_make_error(err, SG_EINVAL, "image reference \"%s\": invalid registry \"%.*s\"", s, (int)dlen, name);
      }
      r->domain = xstrndup(name, dlen);
      path = first_slash + 1;
    }
  }
  if (!r->domain)
    r->domain = xstrdup("docker.io");
  if (!strcmp(r->domain, "index.docker.io")) {
    free(r->domain);
    r->domain = xstrdup("docker.io");
  }
  for (const char *c = path;;) {
    const char *e = strchr(c, '/');
    size_t n = e ? (size_t)(e - c) : strlen(c);
    if (!component_valid(c, n)) {
      bool upper = false;
      for (size_t i = 0; i < n; i++)
        upper |= isupper((unsigned char)c[i]) != 0;
      sg_image_ref_clear(r);
      return sg_make_error(err, SG_EINVAL, "image reference \"%s\": %s", s,
                           upper ? "repository name must be lowercase"
                                 : "invalid repository name (lowercase letters, digits and separators . _ __ -)");
    }
    if (!e)
      break;
    c = e + 1;
  }
  if (!strcmp(r->domain, "docker.io") && !strchr(path, '/'))
    r->repository = xasprintf("library/%s", path);
  else
    r->repository = xstrdup(path);
  /* The bound holds for the normalized name, as its string is parsed again. */
  if (strlen(r->domain) + 1 + strlen(r->repository) > MAX_NAME) {
    sg_image_ref_clear(r);
    return sg_make_error(err, SG_EINVAL, "image reference \"%s\": the name must be 1 to %d characters", s, MAX_NAME);
  }
  if (!r->tag && !r->digest)
    r->tag = xstrdup("latest");
  return 0;
}

char *sg_image_ref_string(const sg_image_ref_t *r) {
  return xasprintf("%s/%s%s%s%s%s", r->domain, r->repository, r->tag ? ":" : "", r->tag ? r->tag : "",
                   r->digest ? "@" : "", r->digest ? r->digest : "");
}

const char *sg_image_ref_api_host(const sg_image_ref_t *r) {
  return !strcmp(r->domain, "docker.io") ? "registry-1.docker.io" : r->domain;
}
