-- A commitment (domain-separated SHA-256, bound to this initialization's wrapped root key) to
-- each unseal share, concatenated in share-id order: a share another initialization issued, or
-- one made up, is refused when submitted instead of resetting every operator's progress. NULL
-- for seals initialized before this migration.
ALTER TABLE seal ADD COLUMN share_commitments BLOB;
