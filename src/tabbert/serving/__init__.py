"""Real-time scoring: :class:`~tabbert.serving.scorer.Scorer` keeps each entity's state and scores
transactions as they come; :mod:`tabbert.serving.state` stores that state (in memory or durably in
SQLite); :mod:`tabbert.serving.app` is the HTTP service that ``tabbert serve`` runs."""
