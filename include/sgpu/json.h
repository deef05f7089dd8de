/* JSON helpers shared by every module that builds or reads jansson values. */
#ifndef SGPU_JSON_H
#define SGPU_JSON_H

#include <jansson.h>

/* Scope-bound release of a JSON reference (json_decrefp() is jansson's). */
#define cleanup_json __attribute__((cleanup(json_decrefp)))

/* Sets "KEY=VALUE" in an array of environment strings (an OCI process's
 * env), replacing KEY's entry if there is one, else appending. */
void sg_json_env_set(json_t *env, const char *kv);

/* Applies a JSON merge patch (RFC 7386) to the object target in place: a
 * null removes its key, an object merges into the target's object of that
 * key (made when absent or not an object), anything else (arrays included)
 * replaces. patch must be an object (a non-object patch replaces the whole
 * document, which the caller handles). */
void sg_json_merge_patch(json_t *target, json_t *patch);

#endif
