/* A standalone driver for libFuzzer-style targets, so that fuzz targets build
 * and run with any compiler. It runs LLVMFuzzerTestOneInput on every file of
 * the given corpus directories (or files), then on a number of deterministic
 * pseudo-random mutations of them.
 *
 *   fuzz-spec [-n MUTATIONS] [-s SEED] [-p INDEX] PATH...
 *
 * -p INDEX prints mutation INDEX to stdout instead of running anything, to
 * reproduce a failure the driver reported. On a crash (abort, segfault or a
 * sanitizer report) the failing input is written to stderr. A target may
 * define LLVMFuzzerInitialize(), called first as libFuzzer does (it may exit
 * 77 to skip when the host lacks what it needs). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
extern int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

extern void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

#define INPUT_LIMIT (64 * 1024)

typedef struct input {
  uint8_t *data;
  size_t len;
  char *name;
} input_t;

static input_t *seeds;
static size_t n_seeds;

/* What is running now, for the crash report. */
static const uint8_t *cur_data;
static size_t cur_len;
static const char *cur_name;
static long cur_index = -1;

static void put(const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0)
      return;
    s += w;
    n -= (size_t)w;
  }
}

static void puts2(const char *s) { put(s, strlen(s)); }

static void report(void) {
  if (!cur_data)
    return;
  char num[32];
  int k = 0;
  long v = cur_index;
  char tmp[32];
  if (v < 0) {
    puts2("\nfuzz: failing input: seed ");
    puts2(cur_name ? cur_name : "?");
  } else {
    puts2("\nfuzz: failing input: mutation ");
    do
      tmp[k++] = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    for (int i = 0; i < k; i++)
      num[i] = tmp[k - 1 - i];
    put(num, (size_t)k);
    puts2(" (reproduce with -p and the same -s and paths)");
  }
  puts2("\n---8<---\n");
  put((const char *)cur_data, cur_len);
  puts2("\n---8<---\n");
  cur_data = NULL;
}

static void on_signal(int sig) {
  report();
  signal(sig, SIG_DFL);
  raise(sig);
}

static void add_seed(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
    exit(2);
  }
  uint8_t *buf = malloc(INPUT_LIMIT);
  if (!buf)
    abort();
  size_t len = fread(buf, 1, INPUT_LIMIT, f);
  fclose(f);
  seeds = realloc(seeds, (n_seeds + 1) * sizeof(*seeds));
  if (!seeds)
    abort();
  seeds[n_seeds].data = buf;
  seeds[n_seeds].len = len;
  seeds[n_seeds].name = strdup(path);
  n_seeds++;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void add_path(const char *path) {
  struct stat st;
  if (stat(path, &st) < 0) {
    fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
    exit(2);
  }
  if (!S_ISDIR(st.st_mode)) {
    add_seed(path);
    return;
  }
  DIR *d = opendir(path);
  if (!d) {
    fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
    exit(2);
  }
  /* Sorted, so the run does not depend on directory order. */
  char **names = NULL;
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.')
      continue;
    names = realloc(names, (n + 1) * sizeof(*names));
    if (!names || asprintf(&names[n], "%s/%s", path, e->d_name) < 0)
      abort();
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof(*names), cmp_str);
  for (size_t i = 0; i < n; i++) {
    if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode))
      add_seed(names[i]);
    free(names[i]);
  }
  free(names);
}

/* xorshift64*: small, fast and the same everywhere. */
static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ULL;
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

/* Tokens that JSON and the spec grammar care about. */
static const char *const dict[] = {
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\u00e9",
    "\\ud800",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e309",
    "-0",
    "0.05",
    "65535",
    "65536",
    "2147483648",
    "9223372036854775808",
    "1.5",
    "\"name\"",
    "\"type\"",
    "\"runtime\"",
    "\"image\"",
    "\"command\"",
    "\"env\"",
    "\"port\"",
    "\"health\"",
    "\"gpu\"",
    "\"workers\"",
    "\"scale\"",
    "\"path\"",
    "\"period_s\"",
    "\"timeout_s\"",
    "\"failure_threshold\"",
    "\"startup_timeout_s\"",
    "\"count\"",
    "\"min\"",
    "\"max\"",
    "\"idle_timeout_s\"",
    "\"max_concurrency\"",
    "\"request_timeout_s\"",
    "\"max_queue\"",
    "\"policy\"",
    "\"value\"",
    "\"sync\"",
    "\"async\"",
    "\"process\"",
    "\"oci\"",
    "\"concurrency\"",
    "\"queue_delay\"",
    "\"/w\"",
    "\"a100\"",
    "\"\"",
    "{}",
    "[]",
};

/* Values that keep a JSON document well formed when they replace another value. */
static const char *const values[] = {
    "null",
    "true",
    "false",
    "0",
    "1",
    "-1",
    "0.01",
    "0.05",
    "2.5",
    "100",
    "1000",
    "1001",
    "10000",
    "65535",
    "65536",
    "86401",
    "1e3",
    "-0.0",
    "\"\"",
    "\"/\"",
    "\"/w\"",
    "\"x\"",
    "\"a100\"",
    "\"A100\"",
    "\"sync\"",
    "\"async\"",
    "\"oci\"",
    "\"queue_delay\"",
    "\"concurrency\"",
    "\"a\\u0001b\"",
    "[]",
    "[1]",
    "[\"/w\", 2]",
    "{}",
    "{\"A\": \"b\"}",
    "{\"1A\": \"b\"}",
    "{\"count\": 2}",
    "{\"max\": 1}",
};

/* Replaces the value after a random ':' or ',' or '[' with one of values[]. */
static size_t replace_value(uint8_t *buf, size_t len, size_t cap) {
  if (!len)
    return len;
  size_t at = below(len), tries = len;
  while (tries-- && buf[at] != ':' && buf[at] != ',' && buf[at] != '[')
    at = (at + 1) % len;
  if (buf[at] != ':' && buf[at] != ',' && buf[at] != '[')
    return len;
  size_t start = at + 1;
  while (start < len && (buf[start] == ' ' || buf[start] == '\n'))
    start++;
  size_t end = start;
  if (end < len && buf[end] == '"') {
    for (end++; end < len && buf[end] != '"'; end++)
      if (buf[end] == '\\')
        end++;
    if (end < len)
      end++;
  } else if (end < len && (buf[end] == '{' || buf[end] == '[')) {
    int depth = 0;
    bool in_str = false;
    for (; end < len; end++) {
      if (in_str) {
        if (buf[end] == '\\')
          end++;
        else if (buf[end] == '"')
          in_str = false;
      } else if (buf[end] == '"') {
        in_str = true;
      } else if (buf[end] == '{' || buf[end] == '[') {
        depth++;
      } else if ((buf[end] == '}' || buf[end] == ']') && --depth == 0) {
        end++;
        break;
      }
    }
  } else {
    while (end < len && buf[end] != ',' && buf[end] != '}' && buf[end] != ']')
      end++;
  }
  if (end > len)
    end = len;
  const char *v = values[below(sizeof(values) / sizeof(values[0]))];
  size_t n = strlen(v);
  if (len - (end - start) + n > cap)
    return len;
  memmove(buf + start + n, buf + end, len - end);
  memcpy(buf + start, v, n);
  return len - (end - start) + n;
}

/* Applies random edits to buf (len bytes, room for cap), few edits being the
 * most likely so that many inputs stay close to valid. Returns the new length. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap) {
  /* A third of the time, change values only: the document stays well formed. */
  if (below(3) == 0) {
    for (size_t k = 1 + below(3); k > 0; k--)
      len = replace_value(buf, len, cap);
    return len;
  }
  int edits = 1;
  while (edits < 8 && below(2))
    edits++;
  for (int e = 0; e < edits; e++) {
    switch (below(11)) {
    case 8:
    case 9:
    case 10:
      len = replace_value(buf, len, cap);
      break;
    case 0: /* flip a bit */
      if (len)
        buf[below(len)] ^= (uint8_t)(1u << below(8));
      break;
    case 1: /* set a byte */
      if (len)
        buf[below(len)] = (uint8_t)rnd();
      break;
    case 2: { /* delete a run */
      if (!len)
        break;
      size_t at = below(len), n = 1 + below(len - at < 16 ? len - at : 16);
      memmove(buf + at, buf + at + n, len - at - n);
      len -= n;
      break;
    }
    case 3:
    case 4: { /* insert a token */
      const char *t = dict[below(sizeof(dict) / sizeof(dict[0]))];
      size_t n = strlen(t), at = below(len + 1);
      if (len + n > cap)
        break;
      memmove(buf + at + n, buf + at, len - at);
      memcpy(buf + at, t, n);
      len += n;
      break;
    }
    case 5: { /* replace a run with a token */
      const char *t = dict[below(sizeof(dict) / sizeof(dict[0]))];
      size_t n = strlen(t);
      if (!len || len + n > cap)
        break;
      size_t at = below(len), del = 1 + below(len - at < 12 ? len - at : 12);
      memmove(buf + at + n, buf + at + del, len - at - del);
      memcpy(buf + at, t, n);
      len = len - del + n;
      break;
    }
    case 6: { /* duplicate a run */
      if (!len)
        break;
      size_t from = below(len), n = 1 + below(len - from < 64 ? len - from : 64), at = below(len + 1);
      if (len + n > cap)
        break;
      uint8_t tmp[64];
      memcpy(tmp, buf + from, n);
      memmove(buf + at + n, buf + at, len - at);
      memcpy(buf + at, tmp, n);
      len += n;
      break;
    }
    default: { /* splice in part of another seed */
      const input_t *o = &seeds[below(n_seeds)];
      if (!o->len)
        break;
      size_t from = below(o->len), n = 1 + below(o->len - from), at = below(len + 1);
      if (len + n > cap)
        n = cap - len;
      memmove(buf + at + n, buf + at, len - at);
      memcpy(buf + at, o->data + from, n);
      len += n;
      break;
    }
    }
  }
  return len;
}

static void run_one(const uint8_t *data, size_t len) {
  /* A private copy, so reads past the end are caught by sanitizers. */
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy)
    abort();
  memcpy(copy, data, len);
  cur_data = copy;
  cur_len = len;
  LLVMFuzzerTestOneInput(copy, len);
  cur_data = NULL;
  free(copy);
}

int main(int argc, char **argv) {
  long mutations = 5000, print_index = -1;
  uint64_t seed = 0x5eed5eedULL;
  int opt;
  if (LLVMFuzzerInitialize)
    LLVMFuzzerInitialize(&argc, &argv);
  while ((opt = getopt(argc, argv, "n:s:p:")) != -1) {
    switch (opt) {
    case 'n':
      mutations = strtol(optarg, NULL, 10);
      break;
    case 's':
      seed = strtoull(optarg, NULL, 0);
      break;
    case 'p':
      print_index = strtol(optarg, NULL, 10);
      break;
    default:
      fprintf(stderr, "usage: %s [-n MUTATIONS] [-s SEED] [-p INDEX] PATH...\n", argv[0]);
      return 2;
    }
  }
  if (optind >= argc) {
    fprintf(stderr, "usage: %s [-n MUTATIONS] [-s SEED] [-p INDEX] PATH...\n", argv[0]);
    return 2;
  }
  for (int i = optind; i < argc; i++)
    add_path(argv[i]);
  if (n_seeds == 0) {
    fprintf(stderr, "fuzz: no inputs found\n");
    return 2;
  }

  signal(SIGABRT, on_signal);
  signal(SIGSEGV, on_signal);
  signal(SIGBUS, on_signal);
  signal(SIGFPE, on_signal);
  if (__sanitizer_set_death_callback)
    __sanitizer_set_death_callback(report);

  if (print_index < 0) {
    for (size_t i = 0; i < n_seeds; i++) {
      cur_name = seeds[i].name;
      run_one(seeds[i].data, seeds[i].len);
    }
  }

  rng_state = seed ? seed : 1;
  uint8_t *buf = malloc(INPUT_LIMIT);
  if (!buf)
    abort();
  for (long k = 0; k < mutations; k++) {
    const input_t *base = &seeds[below(n_seeds)];
    memcpy(buf, base->data, base->len);
    size_t len = mutate(buf, base->len, INPUT_LIMIT);
    if (k == print_index) {
      fwrite(buf, 1, len, stdout);
      free(buf);
      return 0;
    }
    if (print_index >= 0)
      continue;
    cur_index = k;
    run_one(buf, len);
  }
  free(buf);
  if (print_index >= 0) {
    fprintf(stderr, "fuzz: no mutation %ld\n", print_index);
    return 2;
  }
  printf("fuzz: %zu inputs and %ld mutations ran\n", n_seeds, mutations);
  return 0;
}
