"""Runs every snippet of docs/cache-format.md's "Reading the cache elsewhere" section on a real store:
Python blocks (pyarrow, polars) with exec, SQL blocks with DuckDB.

usage: check_cache_docs.py DOC STORE_DIR TEACHER OUTPUT ENTRY_ROWS ALL_ROWS CORPUS CORPUS_ROWS

`cache/` in a snippet stands for STORE_DIR, `<teacher>` and `<output>` for an embeddings entry's
fingerprints, `<corpus>` for one corpus manifest's. A Python snippet must leave `t` (a table of
ENTRY_ROWS rows, or CORPUS_ROWS for a snippet through a manifest) or `meta` (a shard's key-value
metadata, with distill's keys); a query over one entry must return ENTRY_ROWS rows, one over every
entry (`v1/*/*/`) ALL_ROWS, one through a manifest CORPUS_ROWS. Prints one line per snippet; exits 1
at the first that fails.
"""

import re
import sys

import duckdb


def snippets(doc):
    text = open(doc, encoding="utf-8").read()
    start = text.index("## Reading the cache elsewhere")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```(python|sql)\n(.*?)```", text[start:end], flags=re.S)


def rows(t):
    if hasattr(t, "num_rows"):
        return t.num_rows  # pyarrow
    return t.height  # polars


def main():
    doc, store, teacher, output, entry_rows, all_rows, corpus, corpus_rows = sys.argv[1:]
    entry_rows, all_rows, corpus_rows = int(entry_rows), int(all_rows), int(corpus_rows)
    found = snippets(doc)
    kinds = {k for k, _ in found}
    if kinds != {"python", "sql"} or len(found) < 4:
        sys.exit(f"{doc}: expected Python and SQL snippets, found {[k for k, _ in found]}")
    for kind, code in found:
        one_corpus = "<corpus>" in code
        code = (
            code.replace("cache/", store.rstrip("/") + "/")
            .replace("<teacher>", teacher)
            .replace("<output>", output)
            .replace("<corpus>", corpus)
        )
        first = code.strip().splitlines()[0]
        if kind == "sql":
            got = len(duckdb.sql(code).fetchall())
            want = all_rows if "/v1/*/*/" in code else entry_rows
            want = corpus_rows if one_corpus else want
        else:
            env = {}
            exec(compile(code, doc, "exec"), env)
            if "t" in env:
                got, want = rows(env["t"]), corpus_rows if one_corpus else entry_rows
            elif "meta" in env:
                keys = {k.decode() for k in env["meta"]}
                need = {"distill.teacher_fingerprint", "distill.output_fingerprint", "distill.rows"}
                got, want = len(need & keys), len(need)
            else:
                sys.exit(f"{doc}: the snippet {first!r} leaves neither t nor meta")
        status = "ok" if got == want else "FAILED"
        print(f"{status} {kind}: {first} ({got} of {want})")
        if got != want:
            sys.exit(1)


if __name__ == "__main__":
    main()
