-- A ledger file of schema v2 as click-gateway fb60095 (the release before the write-ahead
-- ledger) wrote it: a verified Prepare and Complete of order-v2 (service 12345, forwarded),
-- a forged Prepare and one of an unknown service (82154); dumped with sqlite3 .dump, which
-- leaves out the two header pragmas (added at the end).
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
INSERT INTO callbacks VALUES(1,1796623613373441,'c787f541ddb3d583','127.0.0.1:33544','127.0.0.1','/click/prepare/','application/x-www-form-urlencoded',X'636c69636b5f7472616e735f69643d3230303126736572766963655f69643d313233343526636c69636b5f706179646f635f69643d3737266d65726368616e745f7472616e735f69643d6f726465722d763226616d6f756e743d313030302e303026616374696f6e3d30266572726f723d30266572726f725f6e6f74653d53756363657373267369676e5f74696d653d323032342d30352d30312b313225334133302533413435267369676e5f737472696e673d3266303537616164323336643738353465386433363766353333363535373831','2001','12345','77','order-v2',NULL,'1000.00','0','0','Success','2024-05-01 12:30:45','verified',NULL,NULL,NULL,0,'d3b738e5',1,'enforce',200,'0','Success','5001','7001',1050,800,1860);
INSERT INTO callbacks VALUES(2,1796623613376953,'8821d9bbb2d4a2e9','127.0.0.1:33554','127.0.0.1','/click/complete/','application/x-www-form-urlencoded',X'636c69636b5f7472616e735f69643d3230303126736572766963655f69643d313233343526636c69636b5f706179646f635f69643d3737266d65726368616e745f7472616e735f69643d6f726465722d7632266d65726368616e745f707265706172655f69643d3530303126616d6f756e743d313030302e303026616374696f6e3d31266572726f723d30266572726f725f6e6f74653d53756363657373267369676e5f74696d653d323032342d30352d30312b313225334133302533413435267369676e5f737472696e673d6364363131636439623533653466383831643936653137636461383033643835','2001','12345','77','order-v2','5001','1000.00','1','0','Success','2024-05-01 12:30:45','verified',NULL,NULL,NULL,0,'d3b738e5',1,'enforce',200,'0','Success','5001','7001',605,491,1102);
INSERT INTO callbacks VALUES(3,1796623613378790,'89f3b9a767edb0c5','127.0.0.1:33564','127.0.0.1','/click/prepare/','application/x-www-form-urlencoded',X'636c69636b5f7472616e735f69643d3230303226736572766963655f69643d313233343526636c69636b5f706179646f635f69643d3737266d65726368616e745f7472616e735f69643d6f726465722d76326226616d6f756e743d313030302e303026616374696f6e3d30266572726f723d30266572726f725f6e6f74653d53756363657373267369676e5f74696d653d323032342d30352d30312b313225334133302533413435267369676e5f737472696e673d3835313737636633663063343035303536326434613033663963346661343738','2002','12345','77','order-v2b',NULL,'1000.00','0','0','Success','2024-05-01 12:30:45','rejected','key_mismatch',NULL,'the key(s) of service 12345 do not match (slot 0 fp d3b738e5); no reformatting explains it: the key differs from Click''s, or the body was altered or forged',NULL,NULL,1,'enforce',NULL,NULL,NULL,NULL,NULL,15,NULL,15);
INSERT INTO callbacks VALUES(4,1796623613379406,'6fd4f37d9d850690','127.0.0.1:33580','127.0.0.1','/click/prepare/','application/x-www-form-urlencoded',X'636c69636b5f7472616e735f69643d3230303326736572766963655f69643d383231353426636c69636b5f706179646f635f69643d3737266d65726368616e745f7472616e735f69643d6f726465722d76326326616d6f756e743d313030302e303026616374696f6e3d30266572726f723d30266572726f725f6e6f74653d53756363657373267369676e5f74696d653d323032342d30352d30312b313225334133302533413435267369676e5f737472696e673d3266376530316435363935323764323464613965666131666665636433623035','2003','82154','77','order-v2c',NULL,'1000.00','0','0','Success','2024-05-01 12:30:45','rejected','unknown_service','other_service','no key is configured for service 82154; the body verifies with the key of service 12345 (slot 0, fp d3b738e5): that key is probably filed under the wrong service id',NULL,NULL,1,'enforce',NULL,NULL,NULL,NULL,NULL,29,NULL,29);
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
CREATE TABLE completes (
        service_id      TEXT NOT NULL,
        click_trans_id  TEXT NOT NULL,
        error           TEXT NOT NULL,
        request_id      TEXT NOT NULL,
        token           TEXT NOT NULL,
        time            INTEGER NOT NULL,
        PRIMARY KEY (service_id, click_trans_id)
    ) WITHOUT ROWID;
CREATE INDEX callbacks_merchant_trans_id ON callbacks (merchant_trans_id);
CREATE INDEX callbacks_click_trans_id ON callbacks (click_trans_id, service_id);
CREATE INDEX callbacks_service_time ON callbacks (service_id, time);
CREATE INDEX callbacks_time ON callbacks (time);
CREATE INDEX bindings_time ON bindings (time);
CREATE INDEX completes_time ON completes (time);
COMMIT;
PRAGMA application_id = 1131170631;
PRAGMA user_version = 2;
