"""Hot features: events from a broker, aggregated over windows by stream feature views, written online.

Submodules load lazily (a broker client is imported only by the backend that uses it):
``views`` holds the declarations, ``windows`` the aggregation both paths share, ``sources`` the
broker interface and its table, ``state`` the window state, ``consumer`` the ingestion loop and
``actors`` the consumer group on Ray.
"""
