"""HTTP/1.1 (h11) and WebSocket (wsproto) front end on asyncio."""
