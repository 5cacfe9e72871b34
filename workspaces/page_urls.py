"""The dashboard's pages of sessions, included by `aimos.pages` at the site root."""

from django.urls import path

from workspaces import views

urlpatterns = [
    path("sessions/", views.session_list, name="session-list"),
    path("sessions/<uuid:session_id>/", views.session_detail, name="session-detail"),
    path("sessions/<uuid:session_id>/start/", views.session_start, name="session-start"),
    path("sessions/<uuid:session_id>/stop/", views.session_stop, name="session-stop"),
    path("sessions/<uuid:session_id>/pause/", views.session_pause, name="session-pause"),
    path("sessions/<uuid:session_id>/resume/", views.session_resume, name="session-resume"),
    path("sessions/<uuid:session_id>/delete/", views.session_delete, name="session-delete"),
]
