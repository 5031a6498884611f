"""`python -m fastnn.demo`: draw a digit in a local web page, watch the network think.

- ``command``: the command line (load or train a model, start the server);
- ``server``: the HTTP server (standard library, one thread per connection):
  the page, its files and the JSON API;
- ``engine``: what the API computes, with the numba backend's forward pass;
- ``decode``: a request body -> a uint8 (784,) MNIST image, bounded and checked;
- ``static/``: the page (plain HTML, CSS and JavaScript, package data).
"""
