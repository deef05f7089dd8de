#include "sgpu/json.h"

#include <string.h>

void sg_json_env_set(json_t *env, const char *kv) {
  size_t klen = strcspn(kv, "=");
  size_t i;
  json_t *v;
  json_array_foreach(env, i, v) {
    const char *s = json_string_value(v);
    if (s && !strncmp(s, kv, klen) && s[klen] == '=') {
      json_array_set_new(env, i, json_string(kv));
      return;
    }
  }
  json_array_append_new(env, json_string(kv));
}

void sg_json_merge_patch(json_t *target, json_t *patch) {
  const char *key;
  json_t *value;
  json_object_foreach(patch, key, value) {
    if (json_is_null(value)) {
      json_object_del(target, key);
    } else if (json_is_object(value)) {
      json_t *cur = json_object_get(target, key);
      if (!json_is_object(cur)) {
        cur = json_object();
        json_object_set_new(target, key, cur);
      }
      sg_json_merge_patch(cur, value);
    } else {
      json_object_set_new(target, key, json_deep_copy(value));
    }
  }
}
