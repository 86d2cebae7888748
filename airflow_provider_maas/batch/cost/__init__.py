"""What a batch costs and may cost: estimates before anything is paid, the cap decided before each create.

``prices`` (what answers cost at the user's prices), ``estimates`` (token estimates and worst
cases), ``bounds`` (the operator's bounds on what one request counts), ``budget`` (the cap and the
canary, decided before each create; ``budget_checks``: its settings and prices checked first),
``spend`` (the ledger: what is spent and reserved), ``spend_before`` (what the states a batch
replaced spent), ``canary`` (the first requests sent as one job), ``dry_run`` (what a real run
would send and cost, nothing paid).
"""
