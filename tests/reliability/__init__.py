"""Issue 8 — reliability and security tests (faults survived, bad input rejected, nothing lost, nobody let in).

Each test prints what it tried (run with ``-s``): ``.venv/bin/pytest -s tests/reliability``.

=========================  ==========================================================================
test_operator_crashes      operator SIGKILLed at seeded random moments of a 3-stage curriculum
test_trainer_faults        a trainer rank SIGKILLed mid-stage; SIGTERM preemption + a truncated checkpoint
test_apiserver_restart     API server + etcd stopped and restarted mid-run (dedicated server)
test_bad_input             ≥ 500 invalid manifests against the CLI and the API server + operator
test_numerical_faults      injected NaN / loss spikes, RetryWithLowerLR and Fail, through the operator
test_security              reviewed RBAC table, non-root pods, a planted secret, namespaced trainer Role
=========================  ==========================================================================
"""
