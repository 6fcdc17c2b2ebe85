#!/usr/bin/env python3
"""A small stand-in for Redshift Serverless (and the STS AssumeRole it needs first), for
datagate's tests: moto does not emulate Redshift Serverless. It implements the documented
wire formats only as far as datagate uses them:

- STS Query API: POST form `Action=AssumeRole` -> AssumeRoleResponse XML;
- Redshift Serverless JSON 1.1: `X-Amz-Target: RedshiftServerless.GetCredentials`
  -> {dbUser, dbPassword, expiration, nextRefreshTime};
  `RedshiftServerless.GetWorkgroup` -> {workgroup: {..., endpoint: {address, port}}}.

Every request is appended to --record as one JSON line: {target or action, params}.
Usage: redshift_serverless_standin.py --port 0 --record FILE  (prints `listening on PORT`).
"""

import argparse
import datetime
import http.server
import json
import secrets
import sys
import time
import urllib.parse


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", required=True)
    arguments = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def record(self, entry):
            with open(arguments.record, "a", encoding="utf-8") as file:
                file.write(json.dumps(entry) + "\n")

        def reply(self, status, content_type, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", secrets.token_hex(8))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            target = self.headers.get("X-Amz-Target")
            signed = self.headers.get("Authorization", "")
            if target:
                params = json.loads(body or "{}")
                self.record({"target": target, "params": params, "authorization": signed})
                if target == "RedshiftServerless.GetCredentials":
                    now = time.time()
                    self.reply(200, "application/x-amz-json-1.1", json.dumps({
                        "dbUser": "IAM:" + params.get("dbName", "dev"),
                        "dbPassword": "serverless-" + secrets.token_hex(12),
                        "expiration": now + int(params.get("durationSeconds", 900)),
                        "nextRefreshTime": now + 600,
                    }))
                elif target == "RedshiftServerless.GetWorkgroup":
                    name = params.get("workgroupName", "")
                    self.reply(200, "application/x-amz-json-1.1", json.dumps({"workgroup": {
                        "workgroupId": "00000000-0000-0000-0000-000000000001",
                        "workgroupArn": "arn:aws:redshift-serverless:us-east-1:123456789012:workgroup/" + name,
                        "workgroupName": name,
                        "namespaceName": "analytics",
                        "status": "AVAILABLE",
                        "endpoint": {
                            "address": name + ".123456789012.us-east-1.redshift-serverless.amazonaws.com",
                            "port": 5439,
                        },
                    }}))
                else:
                    self.reply(400, "application/x-amz-json-1.1", json.dumps({
                        "__type": "UnknownOperationException", "message": target}))
                return
            params = {key: values[0] for key, values in urllib.parse.parse_qs(body).items()}
            self.record({"action": params.get("Action"), "params": params, "authorization": signed})
            if params.get("Action") != "AssumeRole":
                self.reply(400, "text/xml", "<ErrorResponse><Error><Code>InvalidAction</Code></Error></ErrorResponse>")
                return
            expiration = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                seconds=int(params.get("DurationSeconds", "3600")))
            self.reply(200, "text/xml", f"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIASTANDIN{secrets.token_hex(4).upper()}</AccessKeyId>
      <SecretAccessKey>{secrets.token_hex(20)}</SecretAccessKey>
      <SessionToken>{secrets.token_hex(32)}</SessionToken>
      <Expiration>{expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROASTANDIN:{params.get("RoleSessionName", "")}</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/standin/{params.get("RoleSessionName", "")}</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>{secrets.token_hex(8)}</RequestId></ResponseMetadata>
</AssumeRoleResponse>""")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", arguments.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
