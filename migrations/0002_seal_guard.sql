-- A sealed audit record is final: once a transaction has its place in the
-- chain (audit_seq set), no UPDATE may touch the row, whoever runs it
-- (the runtime role may only fill the three chain columns of unsealed
-- rows; see `kinbar migrate --print-grants`). Dropping this trigger needs
-- the migration role, and tampering is still caught by `audit verify`.
CREATE FUNCTION kinbar_sealed_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.audit_seq IS NOT NULL THEN
        RAISE EXCEPTION 'audit transaction % is sealed and cannot be changed', OLD.audit_seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER transactions_sealed_is_final
    BEFORE UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION kinbar_sealed_is_final();
