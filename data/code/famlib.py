"""Shared record type for task families (see gen.py).

A family is one programming task with a hand-written weak answer (`bad`) and a
correct answer (`good`). Placeholders look like @@name@@ and are filled from
the per-row slot dictionary built in gen.py (entity, table, dir, app, ...).
"""


def F(fid, lang, cat, tasks, bad, good, details=()):
    """Build one family record.

    fid: unique id; lang: python | javascript | sql | bash; cat: weakness
    category of `bad`; tasks: request phrasings, each a verb phrase starting
    in lower case ("write a Flask route that ..."); details: optional extra
    sentences a user may add; bad/good: code with @@slot@@ placeholders.
    """
    assert tasks, fid
    return {
        "id": fid,
        "lang": lang,
        "cat": cat,
        "tasks": list(tasks),
        "details": list(details),
        "bad": bad.strip("\n"),
        "good": good.strip("\n"),
    }
