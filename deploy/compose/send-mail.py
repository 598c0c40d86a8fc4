"""Example application for deploy/compose.yaml: every INTERVAL_SECONDS, send one message
through the relay with AUTH PLAIN/LOGIN, the way password-only mail software does.

A 4xx reply from the relay means "try again later" (Google unreachable, token trouble):
a real application should keep the message and retry, as this loop does."""

import os
import smtplib
import socket
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

host = os.environ.get("SMTP_HOST", "relay")
port = int(os.environ.get("SMTP_PORT", "2525"))
user = os.environ["SMTP_USER"]
with open(os.environ["SMTP_PASSWORD_FILE"], encoding="utf-8") as f:
    password = f.read().strip()
sender = os.environ["MAIL_FROM"]
recipient = os.environ["MAIL_TO"]
interval = int(os.environ.get("INTERVAL_SECONDS", "3600"))


def send_once() -> None:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = "smtp-oauth-relay compose example"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid()
    msg.set_content(f"Sent by {socket.gethostname()} through {host}:{port}.\n")
    with smtplib.SMTP(host, port, timeout=120) as smtp:
        smtp.ehlo()
        smtp.login(user, password)
        smtp.send_message(msg)


while True:
    try:
        send_once()
        print(f"sent a message from {sender} to {recipient}", flush=True)
        wait = interval
    except (OSError, smtplib.SMTPException) as err:
        # Relay not up yet, or a temporary refusal: retry soon.
        print(f"not sent: {err!r}; retrying in 30 s", flush=True)
        wait = 30
    time.sleep(wait)
