"""Generation, CheXprompt judging and the text, clinical and retrieval metrics of a trained model."""

from radlab.errors import RadlabError


class ScorerError(RadlabError, ValueError):
    """A scorer's files are missing or do not hold what they should; the message names the field and file."""
