"""The live dashboard for the person beside the agent (seed 004's `--dashboard`, for every run).

views.py   what each page shows, as JSON, from the same functions as the tools
app.py     the web application and its guard (token, Host, same-origin POSTs)
serve.py   one dashboard per project: start, find, stop; the process that serves it
static/    the page: index.html, app.js (its own canvas charts), app.css; nothing from the network
"""
