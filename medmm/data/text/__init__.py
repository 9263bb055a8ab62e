"""Clinical text: labelled examples from tables (:mod:`~medmm.data.text.examples`) and
tokenisation with its cache and dynamic padding (:mod:`~medmm.data.text.tokenize`)."""
