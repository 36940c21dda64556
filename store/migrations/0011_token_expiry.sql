-- API tokens may expire (issue 20): a token is refused (401 "token expired") from this instant
-- on. NULL: it never expires (every token made before). Never edit once applied.
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
