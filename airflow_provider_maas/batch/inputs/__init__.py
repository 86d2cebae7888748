"""Request files in: each line checked, the input cut within the service's limits, rewritten in one place.

``lines`` (the one line reader of every JSONL file, requests and results), ``request_lines`` (what
one request line must be; the service's limits per file), ``shards`` (a file planned and copied as
shards within those limits), ``chunks`` (an input cut into chunks, one for each mapped batch
operator), ``rewrite`` (the one place the user's request lines are changed).
"""
