"""sgpud restarts: endpoints survive, workers of the old daemon do not leak."""

import signal
import unittest

from harness import SgpudTestCase, echo_spec, pid_alive, unique_name

SPEC_FIELDS = ("name", "type", "runtime", "image", "command", "env", "port", "health", "gpu",
               "workers", "scale", "version", "created_at")


class RestartTest(SgpudTestCase):

    def assertNoLeakedWorkers(self, sg, names):
        """Every live process started for this daemon is a worker it lists as active."""
        def check():
            live = set(sg.leftover_workers())
            listed = {w["pid"] for n in names for w in sg.active_workers(n)}
            return live <= listed
        self.wait_for(check, 15, message="no worker processes outside sgpud's worker list")

    def test_sigterm_restart_keeps_endpoints_and_stops_old_workers(self):
        sg = self.start_sgpud(gpus="a100:2")
        a, b = unique_name("keep-a"), unique_name("keep-b")
        self.create(echo_spec(a, gpu={"type": "a100", "count": 1},
                              workers={"min": 1, "max": 1}), sg=sg)
        self.create(echo_spec(b), sg=sg)
        sg.update(b, echo_spec(b, env={"MODEL": "second"}))
        (wa,) = sg.wait_ready(a, 1, timeout=20)
        pb = self.assertOk(sg.invoke(b, "/infer", body=b"x"))["worker_pid"]
        before = {n: sg.get(n) for n in (a, b)}
        self.assertEqual(before[b]["version"], 2)
        key = sg.key
        old_pids = [wa["pid"], pb]

        code = sg.stop()
        self.assertEqual(code, 0, "sgpud did not exit cleanly on SIGTERM (status %s)" % code)
        self.wait_for(lambda: not any(pid_alive(p) for p in old_pids), 10,
                      message="workers stopped with sgpud: %s" % old_pids)

        sg.start()
        self.assertEqual(sg.key, key, "admin key changed across restart")
        self.assertEqual(sorted(sg.list_names()), sorted([a, b]))
        for n in (a, b):
            after = sg.get(n)
            for field in SPEC_FIELDS:
                self.assertEqual(after[field], before[n][field], "%s.%s" % (n, field))
        self.assertEqual(sg.get(b)["env"]["MODEL"], "second")

        # min=1 brings a fresh worker back; nothing of the old daemon is alive
        (wa2,) = sg.wait_ready(a, 1, timeout=20)
        self.assertNotIn(wa2["pid"], old_pids)
        for p in old_pids:
            self.assertFalse(pid_alive(p), "worker %d of the old sgpud survived" % p)
        self.assertOk(sg.invoke(a, "/infer", body=b"x"))
        self.assertEqual(self.assertOk(sg.invoke(b, "/infer", body=b"x"))["model"], "second")
        node = sg.nodes()[0]
        self.assertEqual(node["gpus_total"], 2)
        self.assertEqual(node["gpus_free"], 1, node)
        self.assertNoLeakedWorkers(sg, (a, b))

    def test_restart_after_sigkill_reconciles_orphans(self):
        sg = self.start_sgpud()
        a = unique_name("orphan")
        self.create(echo_spec(a, workers={"min": 1, "max": 2}), sg=sg)
        (w0,) = sg.wait_ready(a, 1, timeout=20)
        self.assertOk(sg.invoke(a, "/infer", body=b"x"))

        sg.stop(sig=signal.SIGKILL)  # no chance to clean up
        sg.start()
        self.assertEqual(sg.list_names(), [a])

        # the orphan is either killed or adopted as a worker of the new daemon
        def reconciled():
            if not pid_alive(w0["pid"]):
                return True
            return w0["pid"] in [w["pid"] for w in sg.active_workers(a)]
        self.wait_for(reconciled, 15, message="orphaned worker %d reconciled" % w0["pid"])
        sg.wait_ready(a, 1, timeout=20)
        body = self.assertOk(sg.invoke(a, "/infer", body=b"y"))
        self.assertIn(body["worker_pid"], [w["pid"] for w in sg.active_workers(a)])
        self.assertNoLeakedWorkers(sg, (a,))
        self.assertLessEqual(len(sg.active_workers(a)), 2)


if __name__ == "__main__":
    unittest.main()
