#!/usr/bin/env python3
"""Quality gate on `seismo eval explain --json`: schema-valid answers, grounded statements,
and abstention when the evidence is weak (the explainer issue's bars). Top-hypothesis
accuracy, latency and tokens are reported, not gated: they depend on the model.

With --model the raw grounding violations (what the model wrote before unsupported
sentences were dropped) are reported but not gated: they measure the model, and what
users see has had those sentences removed."""
import json
import sys

MIN_SCHEMA_VALID = 1.0
MAX_VIOLATIONS_PER_MENTION = 0.01
MIN_ABSTAINED_WEAK = 0.9

args = sys.argv[1:]
model_run = "--model" in args
args = [a for a in args if a != "--model"]
r = json.load(open(args[0]))
who = r["model"] or "template"
print(f"{who}: {len(r['cases'])} cases ({r['strong']} strong, {r['weak']} weak)")
print(f"  schema-valid {r['schema_valid']:.1%} (at least {MIN_SCHEMA_VALID:.0%})")
print(f"  grounding violations {r['violations_per_mention']:.2%} of mentions as written"
      + ("" if model_run else f" (at most {MAX_VIOLATIONS_PER_MENTION:.0%})"))
print(f"  grounding violations {r['delivered_violations_per_mention']:.2%} of mentions as delivered (at most {MAX_VIOLATIONS_PER_MENTION:.0%})")
print(f"  abstained on weak evidence {r['abstained_weak']:.1%} (at least {MIN_ABSTAINED_WEAK:.0%})")
print(f"  top hypothesis = injected cause {r['top_cause_accuracy']:.1%}; abstained on strong {r['abstained_strong']:.1%}")
print(f"  latency p50 {r['latency_p50_ms']} ms, p95 {r['latency_p95_ms']} ms; {r['tokens_per_incident']:.0f} tokens per incident")
ok = (r["schema_valid"] >= MIN_SCHEMA_VALID
      and (model_run or r["violations_per_mention"] <= MAX_VIOLATIONS_PER_MENTION)
      and r["delivered_violations_per_mention"] <= MAX_VIOLATIONS_PER_MENTION
      and r["abstained_weak"] >= MIN_ABSTAINED_WEAK)
sys.exit(0 if ok else 1)
