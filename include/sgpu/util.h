/* Small helpers every module uses: allocation that aborts on failure,
 * scope-bound cleanup, clocks, string helpers. */
#ifndef SGPU_UTIL_H
#define SGPU_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline void freep(void *p) { free(*(void **)p); }
static inline void closep(int *fd) {
  if (*fd >= 0)
    close(*fd);
}
static inline void fclosep(FILE **f) {
  if (*f)
    fclose(*f);
}
#define cleanup_free __attribute__((cleanup(freep)))
#define cleanup_close __attribute__((cleanup(closep)))
#define cleanup_fclose __attribute__((cleanup(fclosep)))

/* Takes ownership: returns *pp and sets it to NULL. */
#define steal_pointer(pp)                                                                                              \
  ({                                                                                                                   \
    __typeof__(*(pp)) _p = *(pp);                                                                                      \
    *(pp) = NULL;                                                                                                      \
    _p;                                                                                                                \
  })

#define SG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic milliseconds (for durations and timers). */
int64_t sg_now_ms(void);
/* Wall-clock milliseconds since the epoch (for records shown to people). */
int64_t sg_wall_ms(void);
/* Formats wall-clock ms as RFC 3339 UTC with milliseconds into buf (>= 32 bytes). */
char *sg_format_time(int64_t wall_ms, char *buf, size_t len);

/* Parses "10m", "30s", "2h", "500ms", "1d" into milliseconds; -1 if malformed. */
int64_t sg_parse_duration_ms(const char *s);

/* Fills buf with n random bytes from the kernel; 0 or a negative errno. */
int sg_random_bytes(void *buf, size_t n);
/* A new id: prefix + 12 lowercase hex chars. Caller frees. */
char *sg_new_id(const char *prefix);

/* Writes data to path atomically (temp file + rename) with the given mode. */
int sg_write_file_atomic(const char *path, const char *data, size_t len, int mode);
/* Reads a whole small file (< max bytes); NULL with errno set on failure. */
char *sg_read_file(const char *path, size_t max, size_t *len_out);

/* Creates dir and its parents (mode 0700 for the last one); 0 or -errno. */
int sg_mkdir_p(const char *dir, int mode);

/* sgpud's data directory when none is configured, and where the CLI looks for
 * it: $SGPU_DATA_DIR when set and not empty, else $HOME/.sgpu, else ./.sgpu
 * when HOME is unset or empty. Caller frees. */
char *sg_default_data_dir(void);

bool sg_str_has_prefix(const char *s, const char *prefix);

/* Strips leading and trailing white space in place; returns the first
 * non-space character of s. */
char *sg_str_trim(char *s);

/* Writes all n bytes, retrying on EINTR and short writes; 0, or -1 with
 * errno set. Async-signal-safe (usable between fork and exec). */
int sg_write_all(int fd, const void *buf, size_t n);

/* NULL-terminated string vectors. sg_strv_free frees each string and the
 * vector (NULL is fine); sg_strv_dup copies one (NULL gives an empty vector). */
void sg_strv_free(char **v);
char **sg_strv_dup(char *const *v);
size_t sg_strv_len(char *const *v);
static inline void sg_strv_freep(char ***v) { sg_strv_free(*v); }
#define cleanup_strv __attribute__((cleanup(sg_strv_freep)))

/* A growing string with amortised constant-time appends; the text is
 * NUL-terminated once anything was appended. Start from SG_STRBUF_INIT;
 * sg_strbuf_steal hands the text over ("" when empty) and resets b. */
typedef struct sg_strbuf {
  char *s;
  size_t len, cap;
} sg_strbuf_t;
#define SG_STRBUF_INIT                                                                                                 \
  { NULL, 0, 0 }
/* Makes room for extra more bytes (and the NUL); returns where they go. */
char *sg_strbuf_reserve(sg_strbuf_t *b, size_t extra);
void sg_strbuf_append_n(sg_strbuf_t *b, const char *s, size_t n);
void sg_strbuf_append(sg_strbuf_t *b, const char *s);
void sg_strbuf_appendf(sg_strbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *sg_strbuf_steal(sg_strbuf_t *b);
void sg_strbuf_free(sg_strbuf_t *b);
#define cleanup_strbuf __attribute__((cleanup(sg_strbuf_free)))

/* The event loop's thread. sg_loop_thread_set() records the calling thread
 * as the loop (sgpud's main thread, from when it starts serving: sg_daemon_run).
 * sg_assert_not_loop_thread() aborts when called on that thread, in builds
 * without NDEBUG: it guards functions that may block (SQLite queries) and
 * must run on a pool thread. Before sg_loop_thread_set() it checks nothing. */
void sg_loop_thread_set(void);
bool sg_on_loop_thread(void);
#ifdef NDEBUG
#define sg_assert_not_loop_thread() ((void)0)
#else
void sg_assert_not_loop_thread_at(const char *func);
#define sg_assert_not_loop_thread() sg_assert_not_loop_thread_at(__func__)
#endif

#endif
