"""The gateway process: HTTP/1.1 and HTTP/2 on one port (``http``), the admin API
(``admin``), and ``mdmgate serve`` (``app``)."""
