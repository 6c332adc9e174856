"""Document labels in the product's four languages, and the names of the VAT categories.

The category names are the legal wording each country asks for when no VAT is charged: Spain's
"Inversión del sujeto pasivo" (RD 1619/2012 art. 6.1.m), Portugal's "IVA - autoliquidação" (CIVA
art. 36.º n.º 13), Romania's "taxare inversă" (Codul fiscal art. 319 alin. 20), and the exempt,
intra-community, export and not-subject statements of Directive 2006/112/EC art. 226 (11) and (11a).
"""

LABELS: dict[str, dict[str, str]] = {
    "en": {"invoice": "Invoice", "issued": "Issued", "due": "Due", "from": "From", "to": "Bill to",
           "description": "Description", "quantity": "Qty", "unit_price": "Unit price", "tax": "Tax",
           "amount": "Amount", "subtotal": "Subtotal", "total": "Total", "vat_id": "VAT ID",
           "pay": "Pay now", "iban": "Pay by transfer to IBAN", "vat_breakdown": "VAT breakdown",
           "base": "Taxable amount", "rate": "Rate", "vat": "VAT", "delivery": "Date of supply",
           "registration": "Company reg. no.", "qr": "Fiscal QR code"},
    "es": {"invoice": "Factura", "issued": "Emitida", "due": "Vence", "from": "Emisor", "to": "Cliente",
           "description": "Descripción", "quantity": "Cant.", "unit_price": "Precio unitario", "tax": "IVA",
           "amount": "Importe", "subtotal": "Base imponible", "total": "Total", "vat_id": "NIF",
           "pay": "Pagar ahora", "iban": "Transferencia al IBAN", "vat_breakdown": "Desglose del IVA",
           "base": "Base imponible", "rate": "Tipo", "vat": "Cuota", "delivery": "Fecha de la operación",
           "registration": "Registro Mercantil", "qr": "Código QR tributario"},
    "pt": {"invoice": "Fatura", "issued": "Emitida", "due": "Vencimento", "from": "Emitente", "to": "Cliente",
           "description": "Descrição", "quantity": "Qtd.", "unit_price": "Preço unitário", "tax": "IVA",
           "amount": "Valor", "subtotal": "Subtotal", "total": "Total", "vat_id": "NIF",
           "pay": "Pagar agora", "iban": "Transferência para o IBAN", "vat_breakdown": "Resumo do IVA",
           "base": "Base tributável", "rate": "Taxa", "vat": "IVA", "delivery": "Data do fornecimento",
           "registration": "Matrícula", "qr": "Código QR"},
    "ro": {"invoice": "Factură", "issued": "Emisă", "due": "Scadentă", "from": "Furnizor", "to": "Client",
           "description": "Descriere", "quantity": "Cant.", "unit_price": "Preț unitar", "tax": "TVA",
           "amount": "Valoare", "subtotal": "Subtotal", "total": "Total", "vat_id": "CIF",
           "pay": "Plătește acum", "iban": "Transfer în IBAN", "vat_breakdown": "Detalierea TVA",
           "base": "Bază de impozitare", "rate": "Cota", "vat": "TVA", "delivery": "Data livrării",
           "registration": "Nr. Reg. Com.", "qr": "Cod QR fiscal"},
}  # fmt: skip

#: UNTDID 5305 category → its name on the page, per language. S, L and M show their rate instead.
CATEGORIES: dict[str, dict[str, str]] = {
    "en": {"Z": "Zero rated", "E": "Exempt", "AE": "Reverse charge", "K": "Intra-community supply, exempt",
           "G": "Export outside the EU, exempt", "O": "Not subject to VAT", "L": "IGIC", "M": "IPSI"},
    "es": {"Z": "Tipo cero", "E": "Operación exenta", "AE": "Inversión del sujeto pasivo",
           "K": "Entrega intracomunitaria exenta", "G": "Exportación exenta", "O": "Operación no sujeta",
           "L": "IGIC", "M": "IPSI"},
    "pt": {"Z": "Taxa zero", "E": "Isento", "AE": "IVA - autoliquidação", "K": "Isenção intracomunitária",
           "G": "Exportação isenta", "O": "Não sujeito a IVA", "L": "IGIC", "M": "IPSI"},
    "ro": {"Z": "Cota zero", "E": "Scutit", "AE": "Taxare inversă", "K": "Livrare intracomunitară scutită",
           "G": "Export scutit", "O": "Neimpozabil", "L": "IGIC", "M": "IPSI"},
}  # fmt: skip

#: (country, language) → the tax id label where the country names it otherwise than its language does.
TAX_ID_BY_COUNTRY: dict[tuple[str, str], str] = {("BR", "pt"): "CNPJ/CPF"}


def tax_id_label(lang: str, country: str | None) -> str:
    """A party's tax id label: "CNPJ/CPF" for a Brazilian one on a Portuguese page, the language's otherwise."""
    return TAX_ID_BY_COUNTRY.get((country or "", lang), LABELS[lang]["vat_id"])
