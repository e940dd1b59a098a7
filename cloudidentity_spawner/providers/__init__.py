"""Cloud providers: the pure planning half of each, and (loaded lazily) the API-calling half.

``aws`` and ``gcp`` here import no cloud SDK; the SDK-backed code lives in
separate modules that are imported only when a rule needs them.
"""
