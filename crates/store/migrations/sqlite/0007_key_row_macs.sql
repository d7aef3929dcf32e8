-- Every key row carries an HMAC of its columns under a key that exists only while Sovra is
-- unsealed (docs/formats.md, section 6), and a revision incremented by each change, so an
-- edit made outside Sovra is refused and a replayed older row is found by `sovra db verify`.
-- Rows written before this migration have no MAC; they are refused until
-- `sovra db verify --adopt-unsigned` signs them (docs/operations.md).
ALTER TABLE keys ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN row_mac BLOB;
