/* Image references: Docker's normalization and its rejections. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sgpu/image.h"
#include "sgpu/util.h"

#define DIGEST "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void check(const char *in, const char *domain, const char *repo, const char *tag, const char *digest,
                  const char *full) {
  sg_image_ref_t r;
  sg_error_t *err = NULL;
  int rc = sg_image_ref_parse(in, &r, &err);
  if (rc != 0)
    fail_msg("%s: %s", in, err->message);
  assert_string_equal(r.domain, domain);
  assert_string_equal(r.repository, repo);
  if (tag)
    assert_string_equal(r.tag, tag);
  else
    assert_null(r.tag);
  if (digest)
    assert_string_equal(r.digest, digest);
  else
    assert_null(r.digest);
  char *s = sg_image_ref_string(&r);
  assert_string_equal(s, full);
  free(s);
  sg_image_ref_clear(&r);
}

static void test_normalize(void **state) {
  (void)state;
  check("busybox", "docker.io", "library/busybox", "latest", NULL, "docker.io/library/busybox:latest");
  check("busybox:1.36", "docker.io", "library/busybox", "1.36", NULL, "docker.io/library/busybox:1.36");
  check("user/app", "docker.io", "user/app", "latest", NULL, "docker.io/user/app:latest");
  check("docker.io/busybox", "docker.io", "library/busybox", "latest", NULL, "docker.io/library/busybox:latest");
  check("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", NULL,
        "docker.io/library/busybox:latest");
  check("127.0.0.1:5001/demo/echo:latest", "127.0.0.1:5001", "demo/echo", "latest", NULL,
        "127.0.0.1:5001/demo/echo:latest");
  check("localhost/echo", "localhost", "echo", "latest", NULL, "localhost/echo:latest");
  check("localhost:5000/a/b/c:v1.2-rc_3", "localhost:5000", "a/b/c", "v1.2-rc_3", NULL,
        "localhost:5000/a/b/c:v1.2-rc_3");
  check("ghcr.io/org/my_app__x.y-z:t", "ghcr.io", "org/my_app__x.y-z", "t", NULL, "ghcr.io/org/my_app__x.y-z:t");
  check("nginx@" DIGEST, "docker.io", "library/nginx", NULL, DIGEST, "docker.io/library/nginx@" DIGEST);
  check("r.example.com/x:tag@" DIGEST, "r.example.com", "x", "tag", DIGEST, "r.example.com/x:tag@" DIGEST);
  check("Registry.Example.com/x", "Registry.Example.com", "x", "latest", NULL, "Registry.Example.com/x:latest");
}

static void rejects(const char *in, const char *needle) {
  sg_image_ref_t r;
  sg_error_t *err = NULL;
  if (sg_image_ref_parse(in, &r, &err) == 0)
    fail_msg("accepted \"%s\"", in);
  assert_int_equal(err->status, SG_EINVAL);
  if (needle && !strstr(err->message, needle))
    fail_msg("%s: message \"%s\" lacks \"%s\"", in, err->message, needle);
  sg_error_free(err);
}

static void test_reject(void **state) {
  (void)state;
  rejects("", "empty");
  rejects("Busybox", "lowercase");
  rejects("user/App", "lowercase");
  rejects("a b", "spaces");
  rejects("busybox:", "tag");
  rejects("busybox:-x", "tag");
  rejects("busybox@sha256:abc", "digest");
  rejects("busybox@md5:0123", "digest");
  rejects("-x", "repository");
  rejects("x-", "repository");
  rejects("a//b", "repository");
  rejects("a/b/", "repository");
  rejects("host:port/x", "registry");
  rejects("host:123456/x", "registry");
  rejects("a...b", "repository");
  rejects("a___b", "repository");
  char long_tag[200];
  memset(long_tag, 'a', sizeof(long_tag));
  memcpy(long_tag, "x:", 2);
  long_tag[sizeof(long_tag) - 1] = '\0';
  rejects(long_tag, "tag");
  /* The name bound applies once normalized: "docker.io/library/" counts. */
  char long_name[251];
  memset(long_name, 'a', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';
  rejects(long_name, "255");
  long_name[255 - strlen("docker.io/library/")] = '\0';
  sg_image_ref_t r;
  sg_error_t *err = NULL;
  assert_int_equal(sg_image_ref_parse(long_name, &r, &err), 0);
  char *text = sg_image_ref_string(&r);
  sg_image_ref_t again;
  assert_int_equal(sg_image_ref_parse(text, &again, &err), 0);
  free(text);
  sg_image_ref_clear(&again);
  sg_image_ref_clear(&r);
}

static void test_api_host_and_digest(void **state) {
  (void)state;
  sg_image_ref_t r;
  assert_int_equal(sg_image_ref_parse("busybox", &r, NULL), 0);
  assert_string_equal(sg_image_ref_api_host(&r), "registry-1.docker.io");
  sg_image_ref_clear(&r);
  assert_int_equal(sg_image_ref_parse("127.0.0.1:5000/x", &r, NULL), 0);
  assert_string_equal(sg_image_ref_api_host(&r), "127.0.0.1:5000");
  sg_image_ref_clear(&r);
  assert_true(sg_digest_valid(DIGEST));
  assert_false(sg_digest_valid("sha256:0123"));
  assert_false(sg_digest_valid("sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"));
}

/* ---- manifests and indexes (sg_manifest_parse) ---- */

static int parse(const char *body, const char *ct, sg_manifest_t *m, char **pick, sg_error_t **err) {
  return sg_manifest_parse(body, strlen(body), ct, "reg/repo", m, pick, err);
}

#define LAYER_MT "application/vnd.oci.image.layer.v1.tar+gzip"

static void test_manifest_parse(void **state) {
  (void)state;
  sg_manifest_t m;
  char *pick = NULL;
  sg_error_t *err = NULL;
  const char *ok = "{\"schemaVersion\":2,\"config\":{\"digest\":\"" DIGEST "\",\"size\":12},"
                   "\"layers\":[{\"mediaType\":\"" LAYER_MT "\",\"digest\":\"" DIGEST "\",\"size\":34}]}";
  /* the media type from the Content-Type when the body names none */
  assert_int_equal(parse(ok, "application/vnd.oci.image.manifest.v1+json; charset=utf-8", &m, &pick, &err), 0);
  assert_null(pick);
  assert_string_equal(m.config_digest, DIGEST);
  assert_int_equal(m.config_size, 12);
  assert_int_equal(m.n_layers, 1);
  assert_int_equal(m.layers[0].size, 34);
  assert_true(sg_digest_valid(m.digest));
  sg_manifest_clear(&m);
  assert_int_not_equal(parse(ok, NULL, &m, &pick, &err), 0);
  assert_non_null(strstr(err->message, "unsupported manifest type"));
  sg_error_free(err), err = NULL;

  const char *index = "{\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":["
                      "{\"digest\":\"sha256:1111111111111111111111111111111111111111111111111111111111111111\","
                      "\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\"}},"
                      "{\"digest\":\"" DIGEST "\",\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}}]}";
  assert_int_equal(parse(index, NULL, &m, &pick, &err), 1);
  assert_string_equal(pick, DIGEST);
  free(pick), pick = NULL;

  const char *big = "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"digest\":\"" DIGEST
                    "\",\"size\":4194305},\"layers\":[]}";
  assert_int_equal(parse(big, NULL, &m, &pick, &err), -EFBIG);
  assert_non_null(strstr(err->message, "config blob"));
  sg_error_free(err), err = NULL;

  const char *bad[] = {
      "",
      "[]",
      "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"}",
      ("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"digest\":\"" DIGEST
       "\"},\"layers\":[]}"),
      ("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"digest\":\"" DIGEST
       "\",\"size\":-1},\"layers\":[]}"),
      ("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"digest\":\"" DIGEST
       "\",\"size\":1},\"layers\":[{\"mediaType\":\"text/plain\",\"digest\":\"" DIGEST "\",\"size\":1}]}"),
      ("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"digest\":\"" DIGEST
       "\",\"size\":1},\"layers\":[{\"mediaType\":\"" LAYER_MT "\",\"digest\":\"" DIGEST "\",\"size\":-5}]}"),
      ("{\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"digest\":\"x\","
       "\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}}]}"),
  };
  for (size_t i = 0; i < SG_ARRAY_SIZE(bad); i++) {
    int r = parse(bad[i], NULL, &m, &pick, &err);
    if (r >= 0)
      fail_msg("accepted: %s", bad[i]);
    assert_null(pick);
    assert_null(m.layers);
    sg_error_free(err), err = NULL;
  }
  /* over the bound before any parsing */
  char *huge = xcalloc(1, (4 << 20) + 2);
  memset(huge, ' ', (4 << 20) + 1);
  assert_int_equal(sg_manifest_parse(huge, strlen(huge), NULL, "reg/repo", &m, &pick, &err), -EFBIG);
  sg_error_free(err);
  free(huge);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_normalize),
      cmocka_unit_test(test_reject),
      cmocka_unit_test(test_api_host_and_digest),
      cmocka_unit_test(test_manifest_parse),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
