-- The guard file (ledger.guard.db) that click-gateway fb60095 (schema v2) wrote beside
-- ledger-v2.sql: the bindings of the verified Prepare and Complete of order-v2 and the
-- Complete's verdict; dumped with sqlite3 .dump, which leaves out the two header pragmas
-- (added at the end).
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE callbacks (
        id                  INTEGER PRIMARY KEY,
        time                INTEGER NOT NULL,
        request_id          TEXT NOT NULL,
        peer                TEXT NOT NULL,
        client              TEXT NOT NULL,
        path                TEXT NOT NULL,
        content_type        TEXT,
        body                BLOB NOT NULL,
        click_trans_id      TEXT,
        service_id          TEXT,
        click_paydoc_id     TEXT,
        merchant_trans_id   TEXT,
        merchant_prepare_id TEXT,
        amount              TEXT,
        action              TEXT,
        error               TEXT,
        error_note          TEXT,
        sign_time           TEXT,
        verdict             TEXT NOT NULL,
        reason              TEXT,
        hint                TEXT,
        detail              TEXT,
        slot                INTEGER,
        fp                  TEXT,
        generation          INTEGER NOT NULL,
        mode                TEXT NOT NULL,
        backend_status      INTEGER,
        backend_error       TEXT,
        backend_error_note  TEXT,
        backend_prepare_id  TEXT,
        backend_confirm_id  TEXT,
        gateway_us          INTEGER NOT NULL,
        upstream_us         INTEGER,
        total_us            INTEGER NOT NULL
    );
CREATE TABLE bindings (
        service_id  TEXT NOT NULL,
        sign        TEXT NOT NULL,
        digest      BLOB NOT NULL,
        fields      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        token       TEXT NOT NULL,
        time        INTEGER NOT NULL,
        PRIMARY KEY (service_id, sign)
    ) WITHOUT ROWID;
INSERT INTO bindings VALUES('12345','2f057aad236d7854e8d367f533655781',X'ae81f061ccf5c2843e9c17dc2221d1b43fe3fd0d91d3ce9660c0e9f00004a638','{"action":"0","amount":"1000.00","click_paydoc_id":"77","click_trans_id":"2001","error":"0","error_note":"Success","merchant_trans_id":"order-v2","service_id":"12345","sign_time":"2024-05-01 12:30:45"}','c787f541ddb3d583','4a9f140cd9d317da0000000000000000',1796623613373668);
INSERT INTO bindings VALUES('12345','cd611cd9b53e4f881d96e17cda803d85',X'f2772f208000ea54e2720da1a6c24ff3ef193f6798eabd137b0ae9edd785f6c6','{"action":"1","amount":"1000.00","click_paydoc_id":"77","click_trans_id":"2001","error":"0","error_note":"Success","merchant_prepare_id":"5001","merchant_trans_id":"order-v2","service_id":"12345","sign_time":"2024-05-01 12:30:45"}','8821d9bbb2d4a2e9','4a9f140cd9d317da0000000000000001',1796623613376989);
CREATE TABLE completes (
        service_id      TEXT NOT NULL,
        click_trans_id  TEXT NOT NULL,
        error           TEXT NOT NULL,
        request_id      TEXT NOT NULL,
        token           TEXT NOT NULL,
        time            INTEGER NOT NULL,
        PRIMARY KEY (service_id, click_trans_id)
    ) WITHOUT ROWID;
INSERT INTO completes VALUES('12345','2001','0','8821d9bbb2d4a2e9','4a9f140cd9d317da0000000000000001',1796623613376989);
CREATE INDEX callbacks_merchant_trans_id ON callbacks (merchant_trans_id);
CREATE INDEX callbacks_click_trans_id ON callbacks (click_trans_id, service_id);
CREATE INDEX callbacks_service_time ON callbacks (service_id, time);
CREATE INDEX callbacks_time ON callbacks (time);
CREATE INDEX bindings_time ON bindings (time);
CREATE INDEX completes_time ON completes (time);
COMMIT;
PRAGMA application_id = 1131170631;
PRAGMA user_version = 2;
