"""Everything that imports Locust or gevent, and nothing else (tests/test_layering.py holds this).

- `users`: the per-process state (`HarnessProcess`, one per Locust process: `PROCESS`) and
  `ChatUser`, which picks a prompt and a model and hands the request to `harness.send`;
- `counters`: what Locust counts: one `E2E` request per record, `TTFT`/`TPOT` outside its totals;
- `shape`: the `LoadTestShape` that plays the plan's stages;
- `webui`, `weblogin`: the LLM tab, start-form choices, downloads, and the login page;
- `standalone`: the plan of a plain `locust -f locustfiles/chat.py` run;
- `locustfile`, `locustfile_staged`: what `harness run` hands to Locust.

The rest of the harness (scenario, plan, client, records, run folder, report, servers) imports
without gevent's monkey-patching; this package is imported only inside Locust processes.
"""
