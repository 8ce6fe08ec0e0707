-- Security events (issue 17 item 8): calls Kinbar refused. An authenticated
-- key's refusals (wrong scope, outside its prefixes, over its rate limit)
-- are one row each; refusals without a valid key are aggregated per peer
-- and minute into one row (`aggregate`, unique), whose count grows, so a
-- flood of unauthenticated calls is never one row per call. Kept apart
-- from the audit chain: these rows describe calls, not changes.
CREATE TABLE security_events (
    id bigserial PRIMARY KEY,
    at_ms bigint NOT NULL,
    key_name text NOT NULL,
    peer text NOT NULL,
    method text NOT NULL,
    code text NOT NULL,
    reason text NOT NULL,
    count bigint NOT NULL DEFAULT 1,
    aggregate text UNIQUE
);
