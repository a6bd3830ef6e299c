"""Compose and review forms. Template problems are refused on save, with their position."""

from __future__ import annotations

from typing import Any

from django import forms

from accounts.importer import check_attribute_name

from .audience import parse_address_list
from .models import Campaign
from .rendering import template_errors
from .templating import html_changes


class CampaignForm(forms.ModelForm[Campaign]):
    audience_count = forms.CharField(required=False, disabled=True, label="Recipients now")

    class Meta:
        model = Campaign
        fields = list(Campaign.CONTENT_FIELDS)
        widgets = {
            "subject_template": forms.TextInput(attrs={"size": 90}),
            "text_template": forms.Textarea(
                attrs={"rows": 12, "cols": 90, "class": "vLargeTextField"}
            ),
            "html_template": forms.Textarea(
                attrs={"rows": 12, "cols": 90, "class": "vLargeTextField"}
            ),
            "audience_addresses": forms.Textarea(attrs={"rows": 4, "cols": 60}),
        }

    def clean_audience_attribute_name(self) -> str:
        name: str = self.cleaned_data.get("audience_attribute_name", "").strip()
        problem = check_attribute_name(name) if name else None
        if problem:
            raise forms.ValidationError(f"Use an imported attribute name: {name!r} {problem}.")
        return name

    def clean_audience_addresses(self) -> str:
        text: str = self.cleaned_data.get("audience_addresses", "")
        _, errors = parse_address_list(text)
        if errors:
            shown = errors[:20]
            more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
            raise forms.ValidationError("; ".join(shown) + more)
        return text

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        candidate = Campaign(
            category=cleaned.get("category") or Campaign.Category.ANNOUNCEMENT,
            subject_template=cleaned.get("subject_template", ""),
            text_template=cleaned.get("text_template", ""),
            html_template=cleaned.get("html_template", ""),
        )
        for name, error in template_errors(candidate).items():
            if name in self.fields and name not in self.errors:
                self.add_error(name, error)
        html = cleaned.get("html_template", "")
        if html and "html_template" not in self.errors:
            removed = html_changes(html)
            if removed:
                self.add_error(
                    "html_template",
                    "Not allowed in email HTML (it would be removed): " + "; ".join(removed),
                )
        if cleaned.get("audience_attribute_name") and not cleaned.get("audience_attribute_value"):
            self.add_error("audience_attribute_value", "Give the value the attribute must equal.")
        return cleaned


class DecisionForm(forms.Form):
    digest = forms.RegexField(
        regex=r"^[0-9a-f]{64}$", error_messages={"invalid": "Malformed digest."}
    )
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))
