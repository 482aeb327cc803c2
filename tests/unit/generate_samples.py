"""Good teacher outputs per synthetic group, shared by the generate tests (validation, pipeline)."""

from __future__ import annotations

GOOD = {
    "short_long": {"user_query": "how do vaccines train immunity",
                   "positive_document": "Vaccines expose the immune system to a harmless antigen so memory cells form.",
                   "hard_negative_document": "The history of smallpox spans thousands of years across many continents."},
    "long_short": {"input_text": "The battery died after two days and support never answered my emails.",
                   "label": "negative", "misleading_label": "neutral"},
    "short_short": {"input": "Paris", "positive_document": "capital city of France"},
    "long_long": {"input": "A long essay arguing that cities should ban cars from their centres to cut pollution.",
                  "positive_document": "A long rebuttal arguing that car bans hurt small shops and commuters from suburbs."},
    "sts": {"S1": "A man is playing a guitar.", "S2": "A man plays the guitar.", "S3": "A man is holding a violin."},
    "bitext": {"S1": "The cat sleeps on the sofa.", "S2": "Le chat dort sur le canapé.", "S3": "Le chien dort sur le lit."},
}
