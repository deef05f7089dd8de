/* What Slurm prints, parsed: job states, times, scontrol records, GRES.
 * Pure; any thread. */
#include <ctype.h>
#include <string.h>
#include <time.h>

#include "slurm-internal.h"
#include "sgpu/util.h"

bool sg_slurm_ended_state(const char *s) {
  return *s && strcmp(s, "PENDING") && strcmp(s, "RUNNING") && strcmp(s, "CONFIGURING") && strcmp(s, "COMPLETING") &&
         strcmp(s, "SUSPENDED") && strcmp(s, "REQUEUED") && strcmp(s, "RESIZING") && strcmp(s, "SIGNALING") &&
         strcmp(s, "STAGE_OUT");
}

int64_t sg_slurm_parse_time(const char *s) {
  struct tm tm = {0};
  const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end || *end)
    return 0;
  tm.tm_isdst = -1;
  time_t t = mktime(&tm);
  return t < 0 ? 0 : (int64_t)t * 1000;
}

bool sg_slurm_field(const char *rec, const char *key, char *out, size_t len) {
  size_t kl = strlen(key);
  for (const char *p = rec; (p = strstr(p, key)); p += kl) {
    if ((p == rec || p[-1] == ' ') && p[kl] == '=') {
      const char *v = p + kl + 1;
      size_t n = strcspn(v, " \n");
      if (n >= len)
        n = len - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return true;
    }
  }
  out[0] = '\0';
  return false;
}

void sg_slurm_copy(char *dst, size_t len, const char *src, size_t n) {
  if (n >= len)
    n = len - 1;
  memcpy(dst, src, n);
  dst[n] = '\0';
}

/* "gpu:a100:4(S:0)" -> type a100, count 4; "gpu:a100:2(IDX:0-1)" -> count 2. */
void sg_slurm_parse_gres(const char *g, char *type, size_t tlen, int *count) {
  *count = 0;
  for (const char *p = g; (p = strstr(p, "gpu:")); p += 4) {
    if (p != g && p[-1] != ',')
      continue;
    const char *a = p + 4;
    const char *colon = strchr(a, ':');
    const char *stop = a + strcspn(a, ",(");
    if (colon && colon < stop) {
      if (type && !*type)
        sg_slurm_copy(type, tlen, a, (size_t)(colon - a));
      *count += atoi(colon + 1);
    } else {
      *count += atoi(a);
    }
  }
}

char *sg_slurm_last_line(const char *text) {
  const char *end = text + strlen(text);
  while (end > text && isspace((unsigned char)end[-1]))
    end--;
  const char *start = end;
  while (start > text && start[-1] != '\n')
    start--;
  return xstrndup(start, (size_t)(end - start));
}
