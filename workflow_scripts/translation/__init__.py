"""GPT translation of a dataset through any OpenAI-compatible server: cached, resumable, exact-once.

One job translates the items of one dataset into one language
(``results/translated/{dataset}/{lang}.parquet``) with the official ``openai``
client; ``base_url`` selects the server (OpenAI, Azure OpenAI's ``/openai/v1/``
endpoint, vLLM, Ollama, any server speaking the chat-completions API). The API
key is read from the environment variable named by ``api_key_env`` and only
handed to the client: it is never logged, written to a table, the cache or the
report (every message that could echo it is scrubbed). Modules: ``settings``
(config sections), ``sources`` (items), ``cache``, ``client`` (the server),
``quality``, ``run`` (:func:`~workflow_scripts.translation.run.translate_dataset`)
and ``__main__`` (the CLI: ``python -m workflow_scripts.translation``).

Decisions:

- **Items.** ``bundled``: paragraphs of the source language of the bundled
  corpus, cleaned like the prepared corpus and restricted to its hash split
  (``subset``, default ``eval``); ``local``: a ``.jsonl``/``.parquet``/``.csv``/``.txt``
  file; ``huggingface``: a dataset streamed through ``datasets``. Finite sources
  are ordered by a hash of the item id (the order the parallel condition uses)
  and cut to ``max_items``; a hub dataset is streamed and cut (never downloaded
  whole). The target language equal to ``source_lang`` is the source itself
  (``translator: source``), so the parallel condition reads one table per language.
- **Exact once.** Every finished item is appended at once to a JSON-lines cache
  (``results/translated/.cache/{dataset}/{lang}.jsonl``, flushed and fsync'ed per
  line, outside the Snakemake output so a failed job never deletes it), keyed by
  sha256 of (model, prompt_version, source text, target language). A run first
  takes every cached item, then pays only for the rest; a killed run resumes
  where it stopped. An exclusive lock on the cache stops a second run of the same
  job. The only possible duplicate is a reply the server sent but the process
  never persisted because it was killed in that instant (at most ``concurrency``
  items per kill): chat completions have no idempotency key.
- **Retries.** The client runs with ``max_retries=0``; the run retries 429,
  408/409 and 5xx replies, timeouts, connection errors, malformed JSON, empty
  choices and empty content, up to ``max_retries`` times, with exponential backoff
  and jitter; a ``Retry-After`` (or ``retry-after-ms``) header is honoured and
  pauses every worker. 401/403/404 stop the run (every item would fail); other
  4xx replies and ``content_filter`` fail the item without retry. Failed items are
  reported (log and error message), never written as translations; the job fails
  if more than ``max_failed`` items failed (the successes stay cached).
- **Budget.** ``budget.max_items`` (items paid for in this run) and
  ``budget.max_tokens`` (tokens of this run; calls in flight may overshoot by up
  to ``concurrency`` replies) stop new requests cleanly; what is done stays
  cached and the job fails with a message saying how many items are cached and
  how to continue, so nothing half-finished looks complete.
- **Quality.** ``detected_lang`` is the offline identifier's answer
  (:class:`~workflow_scripts.langid.TokenLanguageClassifier` over
  ``langid_languages`` plus the source and target), ``lang_ok`` whether it is the
  target. ``length_ratio`` = characters of the translation / of the source;
  ``length_outlier`` flags a ratio outside ``length_ratio_bounds`` times the
  median ratio of the table (the median absorbs the script: Chinese is shorter
  than English in characters). Flagged rows are kept, never silently dropped.
- **Cost.** ``price_per_1k_tokens`` (prompt, completion) only feeds the estimate in
  the progress bar and the report.
"""
