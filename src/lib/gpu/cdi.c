/* CDI: nvidia.com/gpu specs loaded from a directory (JSON or YAML), the
 * container edits they give a worker's GPUs, and those edits applied to an
 * OCI config. */
#include "sgpu/cdi.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <yaml.h>

#include "sgpu/json.h"
#include "sgpu/log.h"
#include "sgpu/util.h"

struct sg_cdi {
  json_t *specs; /* array of nvidia.com/gpu CDI specs */
};

static json_t *yaml_node_json(yaml_document_t *doc, yaml_node_t *n, int depth) {
  if (!n || depth > 64)
    return json_null();
  switch (n->type) {
  case YAML_SCALAR_NODE: {
    const char *v = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
      char *end;
      errno = 0;
      long long x = strtoll(v, &end, 10);
      if (len && *end == '\0' && !errno)
        return json_integer(x);
      if (!strcmp(v, "true") || !strcmp(v, "false"))
        return json_boolean(!strcmp(v, "true"));
      if (!strcmp(v, "null") || !strcmp(v, "~") || len == 0)
        return json_null();
    }
    return json_stringn(v, len);
  }
  case YAML_SEQUENCE_NODE: {
    json_t *a = json_array();
    for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top; i++)
      json_array_append_new(a, yaml_node_json(doc, yaml_document_get_node(doc, *i), depth + 1));
    return a;
  }
  case YAML_MAPPING_NODE: {
    json_t *o = json_object();
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
      yaml_node_t *k = yaml_document_get_node(doc, p->key);
      if (k && k->type == YAML_SCALAR_NODE)
        json_object_set_new(o, (const char *)k->data.scalar.value,
                            yaml_node_json(doc, yaml_document_get_node(doc, p->value), depth + 1));
    }
    return o;
  }
  default:
    return json_null();
  }
}

static json_t *load_yaml(const char *path) {
  FILE *f = fopen(path, "re");
  if (!f)
    return NULL;
  yaml_parser_t parser;
  yaml_document_t doc;
  json_t *j = NULL;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, f);
  if (yaml_parser_load(&parser, &doc)) {
    j = yaml_node_json(&doc, yaml_document_get_root_node(&doc), 0);
    yaml_document_delete(&doc);
  }
  yaml_parser_delete(&parser);
  fclose(f);
  return j;
}

sg_cdi_t *sg_cdi_load(const char *dir) {
  sg_cdi_t *cdi = xcalloc(1, sizeof(*cdi));
  cdi->specs = json_array();
  DIR *d = opendir(dir);
  if (!d)
    return cdi;
  struct dirent *de;
  while ((de = readdir(d))) {
    const char *dot = strrchr(de->d_name, '.');
    if (!dot || (strcmp(dot, ".json") && strcmp(dot, ".yaml") && strcmp(dot, ".yml")))
      continue;
    cleanup_free char *path = xasprintf("%s/%s", dir, de->d_name);
    json_t *j = !strcmp(dot, ".json") ? json_load_file(path, 0, NULL) : load_yaml(path);
    const char *kind = json_string_value(json_object_get(j, "kind"));
    if (!kind || strcmp(kind, "nvidia.com/gpu") || !json_is_array(json_object_get(j, "devices"))) {
      if (j)
        sg_debug("oci: %s is not an NVIDIA GPU CDI spec; ignored", path);
      else
        sg_warn("oci: cannot parse CDI spec %s; ignored", path);
      json_decref(j);
      continue;
    }
    sg_info("oci: CDI spec %s: %zu NVIDIA device(s)", path, json_array_size(json_object_get(j, "devices")));
    json_array_append_new(cdi->specs, j);
  }
  closedir(d);
  return cdi;
}

void sg_cdi_free(sg_cdi_t *cdi) {
  if (!cdi)
    return;
  json_decref(cdi->specs);
  free(cdi);
}

size_t sg_cdi_count(const sg_cdi_t *cdi) { return cdi ? json_array_size(cdi->specs) : 0; }

json_t *sg_cdi_edits(const sg_cdi_t *cdi, const int *gpus, int n) {
  json_t *edits = json_array();
  size_t i;
  json_t *spec;
  json_array_foreach(cdi->specs, i, spec) {
    bool used = false;
    for (int g = 0; g < n; g++) {
      char name[16];
      snprintf(name, sizeof(name), "%d", gpus[g]);
      size_t k;
      json_t *dev;
      json_array_foreach(json_object_get(spec, "devices"), k, dev) {
        const char *dn = json_string_value(json_object_get(dev, "name"));
        if (dn && !strcmp(dn, name) && json_object_get(dev, "containerEdits")) {
          json_array_append(edits, json_object_get(dev, "containerEdits"));
          used = true;
        }
      }
    }
    if (used && json_object_get(spec, "containerEdits"))
      json_array_append(edits, json_object_get(spec, "containerEdits"));
  }
  return edits;
}

int sg_cdi_apply(json_t *c, const json_t *edits, bool userns, sg_error_t **err) {
  json_t *process = json_object_get(c, "process");
  json_t *env = json_object_get(process, "env");
  json_t *linux_ = json_object_get(c, "linux");
  json_t *devices = json_object_get(linux_, "devices");
  json_t *rdev = json_object_get(json_object_get(linux_, "resources"), "devices");
  json_t *mounts = json_object_get(c, "mounts");
  size_t i;
  json_t *e;
  json_array_foreach(edits, i, e) {
    size_t k;
    json_t *x;
    json_array_foreach(json_object_get(e, "env"), k, x) if (json_is_string(x) && strchr(json_string_value(x), '='))
        sg_json_env_set(env, json_string_value(x));
    json_array_foreach(json_object_get(e, "deviceNodes"), k, x) {
      const char *path = json_string_value(json_object_get(x, "path"));
      const char *host = json_string_value(json_object_get(x, "hostPath"));
      if (!path)
        continue;
      struct stat st;
      if (stat(host ? host : path, &st) < 0)
        return sg_make_error(err, errno, "CDI device %s: %s", host ? host : path, strerror(errno));
      if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode))
        return sg_make_error(err, EINVAL, "CDI device %s is not a device node", host ? host : path);
      const char *type = S_ISCHR(st.st_mode) ? "c" : "b";
      if (userns) {
        /* No device node can be made in a user namespace: the host's is bound. */
        json_array_append_new(mounts, json_pack("{s:s, s:s, s:s, s:[s, s]}", "destination", path, "type", "bind",
                                                "source", host ? host : path, "options", "bind", "nosuid"));
        continue;
      }
      json_array_append_new(devices,
                            json_pack("{s:s, s:s, s:I, s:I, s:i, s:i, s:i}", "path", path, "type", type, "major",
                                      (json_int_t)major(st.st_rdev), "minor", (json_int_t)minor(st.st_rdev), "fileMode",
                                      (int)(st.st_mode & 0777), "uid", 0, "gid", 0));
      const char *perm = json_string_value(json_object_get(x, "permissions"));
      json_array_append_new(rdev, json_pack("{s:b, s:s, s:I, s:I, s:s}", "allow", 1, "type", type, "major",
                                            (json_int_t)major(st.st_rdev), "minor", (json_int_t)minor(st.st_rdev),
                                            "access", perm ? perm : "rwm"));
    }
    json_array_foreach(json_object_get(e, "mounts"), k, x) {
      const char *hp = json_string_value(json_object_get(x, "hostPath"));
      const char *cp = json_string_value(json_object_get(x, "containerPath"));
      if (!hp || !cp)
        continue;
      json_t *opts = json_object_get(x, "options");
      json_array_append_new(mounts,
                            json_pack("{s:s, s:s, s:s, s:O}", "destination", cp, "type", "bind", "source", hp,
                                      "options", json_is_array(opts) ? opts : json_pack("[s, s]", "rbind", "ro")));
      if (!json_is_array(opts))
        json_decref(json_object_get(json_array_get(mounts, json_array_size(mounts) - 1), "options"));
    }
    json_array_foreach(json_object_get(e, "hooks"), k, x) {
      const char *name = json_string_value(json_object_get(x, "hookName"));
      const char *path = json_string_value(json_object_get(x, "path"));
      if (!name || !path)
        continue;
      json_t *hooks = json_object_get(c, "hooks");
      if (!hooks)
        json_object_set_new(c, "hooks", hooks = json_object());
      json_t *list = json_object_get(hooks, name);
      if (!list)
        json_object_set_new(hooks, name, list = json_array());
      json_t *h = json_pack("{s:s}", "path", path);
      if (json_object_get(x, "args"))
        json_object_set(h, "args", json_object_get(x, "args"));
      if (json_object_get(x, "env"))
        json_object_set(h, "env", json_object_get(x, "env"));
      json_array_append_new(list, h);
    }
  }
  return 0;
}
