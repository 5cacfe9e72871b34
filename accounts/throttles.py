from rest_framework import throttling


class UserRateThrottle(throttling.UserRateThrottle):
    rate = "100/min"


class AnonRateThrottle(throttling.AnonRateThrottle):
    rate = "60/min"
