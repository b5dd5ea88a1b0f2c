"""Who may do what, and how much: API keys and namespaces, authentication, request size and
time limits, rate limits, the keyless loopback guard and the audit log."""
